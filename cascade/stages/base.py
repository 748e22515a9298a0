"""The stage protocol and the re-rank window every scoring stage shares.

A stage is one object with one async call: candidates in, candidates out,
re-scored and cut. Like a Vespa phase, a stage scores the top ``rerank``
candidates it is given (all of them by default); those it scored rank above
those it did not, which keep the previous order. Then the list is cut to
``keep``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cascade.candidates import Candidates, stable_order

if TYPE_CHECKING:
    from cascade.config import IndexConfig
    from cascade.query import Query
    from cascade.settings import Settings


@runtime_checkable
class Stage(Protocol):
    name: str
    kind: str  # the config type, e.g. "cross_encoder": how evaluation counts its cost

    async def __call__(self, query: "Query", candidates: Candidates, deadline: float | None) -> Candidates: ...


@dataclass
class BuildContext:
    """What a stage may need to build itself: settings (model folders) and its index's config."""

    settings: "Settings"
    index: "IndexConfig"
    feature_names: list[str] | None = None  # the index's feature set, for stages that score features


class Combine(BaseModel):
    """How a stage's output order mixes its own score with earlier ones (like a Vespa global-phase expression).

    ``weights`` maps score names (this stage's name, an earlier stage's name, or
    ``fusion``) to weights; each score is normalized over the re-scored window
    first, so weights compare like with like.
    """

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(min_length=1)
    normalize: Literal["zscore", "minmax", "rank"] = "zscore"


class StageConfigBase(BaseModel):
    """Fields every stage config has. A stage's own config subclasses this and adds ``type``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Name in traces and evaluation (default: the type).")
    rerank: int | None = Field(default=None, ge=1, le=10_000, description="Score only the top N incoming.")
    keep: int | None = Field(default=None, ge=1, le=10_000, description="Pass on at most N candidates.")
    combine: Combine | None = Field(default=None, description="Order by a weighted sum of normalized scores.")
    enabled: bool = Field(default=True, description="Per-index gate: false turns the stage off for this index.")

    @property
    def stage_name(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    def build(self, ctx: BuildContext) -> Stage:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


def _normalize(x: np.ndarray, how: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if how == "rank":  # 1 for the best, down to 1/n: robust to outliers and to score scales
        r = np.empty(len(x))
        r[stable_order(x)] = np.arange(len(x))
        return 1.0 - r / max(len(x), 1)
    lo, hi, sd = np.nanmin(x), np.nanmax(x), np.nanstd(x)
    if how == "minmax":
        return (x - lo) / (hi - lo) if hi > lo else np.ones_like(x)
    return (x - np.nanmean(x)) / sd if sd > 0 else np.zeros_like(x)


def combined(candidates: Candidates, own: np.ndarray, name: str, combine: "Combine") -> np.ndarray:
    """The weighted sum of normalized scores over the window (the first ``len(own)`` candidates)."""
    n = len(own)
    total = np.zeros(n)
    for src, w in combine.weights.items():
        col = own if src == name else candidates.stage_scores[src][:n]
        col = np.where(np.isnan(col), np.nanmin(col) if np.isfinite(col).any() else 0.0, col)
        total += w * _normalize(col, combine.normalize)
    return total


def apply_scores(candidates: Candidates, scores: np.ndarray, name: str, keep: int | None,
                 combine: "Combine | None" = None) -> Candidates:
    """Reorder the first ``len(scores)`` candidates by ``scores``; the rest follow in their order.

    ``stage_scores[name]`` keeps the stage's own score; with ``combine`` the order
    (and ``score``) follows the combination instead.
    """
    n, total = len(scores), len(candidates)
    scores = np.asarray(scores, dtype=np.float64)
    rank_by = combined(candidates, scores, name, combine) if combine is not None and n else scores
    order = np.concatenate([stable_order(rank_by), np.arange(n, total)])
    own, final = np.full(total, np.nan), np.full(total, np.nan)
    own[:n], final[:n] = scores, rank_by
    out = candidates.take(order)
    out.stage_scores[name] = own[order]
    scored = ~np.isnan(out.stage_scores[name])
    out.score = np.where(scored, final[order], out.score)
    out.scored[name] = n
    return out.head(keep)


class Reranker:
    """Base for stages that assign one score per candidate; subclasses implement :meth:`score`."""

    kind = "reranker"

    def __init__(self, name: str, rerank: int | None, keep: int | None, combine: Combine | None = None):
        self.name, self.rerank, self.keep, self.combine = name, rerank, keep, combine

    async def score(self, query: "Query", candidates: Candidates, deadline: float | None) -> np.ndarray:
        raise NotImplementedError

    async def __call__(self, query: "Query", candidates: Candidates, deadline: float | None) -> Candidates:
        window = candidates.head(self.rerank)
        scores = await self.score(query, window, deadline) if len(window) else np.zeros(0)
        if len(scores) != len(window):
            raise RuntimeError(f"stage {self.name} returned {len(scores)} scores for {len(window)} candidates")
        return apply_scores(candidates, scores, self.name, self.keep, self.combine)

    def describe(self) -> dict[str, Any]:
        d = {"name": self.name, "type": self.kind, "rerank": self.rerank, "keep": self.keep}
        if self.combine is not None:
            d["combine"] = f"{self.combine.normalize}: " + " + ".join(f"{w:g}*{k}" for k, w in self.combine.weights.items())
        return d
