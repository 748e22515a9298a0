"""The stage protocol and the re-rank window every scoring stage shares.

A stage is one object with one async call: candidates in, candidates out,
re-scored and cut. Like a Vespa phase, a stage scores the top ``rerank``
candidates it is given (all of them by default); those it scored rank above
those it did not, which keep the previous order. Then the list is cut to
``keep``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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


class StageConfigBase(BaseModel):
    """Fields every stage config has. A stage's own config subclasses this and adds ``type``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Name in traces and evaluation (default: the type).")
    rerank: int | None = Field(default=None, ge=1, le=10_000, description="Score only the top N incoming.")
    keep: int | None = Field(default=None, ge=1, le=10_000, description="Pass on at most N candidates.")

    @property
    def stage_name(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    def build(self, ctx: BuildContext) -> Stage:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


def apply_scores(candidates: Candidates, scores: np.ndarray, name: str, keep: int | None) -> Candidates:
    """Reorder the first ``len(scores)`` candidates by ``scores``; the rest follow in their order."""
    n, total = len(scores), len(candidates)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.concatenate([stable_order(scores), np.arange(n, total)])
    full = np.full(total, np.nan)
    full[:n] = scores
    out = candidates.take(order)
    out.stage_scores[name] = full[order]
    scored = ~np.isnan(out.stage_scores[name])
    out.score = np.where(scored, out.stage_scores[name], out.score)
    out.scored[name] = n
    return out.head(keep)


class Reranker:
    """Base for stages that assign one score per candidate; subclasses implement :meth:`score`."""

    kind = "reranker"

    def __init__(self, name: str, rerank: int | None, keep: int | None):
        self.name, self.rerank, self.keep = name, rerank, keep

    async def score(self, query: "Query", candidates: Candidates, deadline: float | None) -> np.ndarray:
        raise NotImplementedError

    async def __call__(self, query: "Query", candidates: Candidates, deadline: float | None) -> Candidates:
        window = candidates.head(self.rerank)
        scores = await self.score(query, window, deadline) if len(window) else np.zeros(0)
        if len(scores) != len(window):
            raise RuntimeError(f"stage {self.name} returned {len(scores)} scores for {len(window)} candidates")
        return apply_scores(candidates, scores, self.name, self.keep)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "rerank": self.rerank, "keep": self.keep}
