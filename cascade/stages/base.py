"""The stage contract and the re-rank window every scoring stage shares.

A stage type is one module: a pydantic config class (its ``type`` literal is
the name in YAML) and the stage it builds. Everything the rest of the system
asks of a stage is declared there, so config checks, the service, overrides,
metrics, evaluation, ``explain`` and the benchmarks never test a stage's type:

- ``cost_unit``: what the stage's ``scored`` count measures (``pairs`` for a
  cross-encoder, ``rows`` for LTR, ``calls`` or ``tokens`` for an LLM); traces,
  metrics and evaluation report cost in that unit.
- ``reads_features`` / ``text_fields()``: the feature matrix is computed only
  when an enabled stage reads it, and stored fields are fetched only for the
  window of a stage that reads them, when it runs.
- ``pair_cacheable``: its scores depend on (query, document text) only, so the
  builder may put the pair-score cache in front of its scorer, keyed by the
  scorer's model stamp.
- ``validate_index(index, key)``: start-up checks against the index config.
- ``early_exit`` (every stage config has it): skip the stage for a query when
  the step before it is already confident (:class:`EarlyExit`); the controller
  decides before the stage runs and the trace records the decision.
- At run time: ``describe()`` (what ``explain`` and the plan show),
  ``cost_units(n)`` (units of ``cost_unit`` that scoring ``n`` candidates
  takes, which latency budgets plan with), ``model_stamp()`` (part of cache
  keys and fingerprints) and ``close()``; work besides ``scored`` (an LLM's
  tokens) is metered with :func:`cascade.stages.usage.record`.

Like a Vespa phase, a stage scores the top ``rerank`` candidates it is given
(all by default); those rank above the rest, which keep the previous order
shifted below them, so ``score`` never increases down the list. Then the list
is cut to ``keep``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Literal, Mapping, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade.candidates import Candidates, stable_order

if TYPE_CHECKING:
    from cascade.query import Query
    from cascade.settings import Settings


class IndexView(Protocol):
    """What a stage may read of its index's config (``cascade.config.IndexConfig`` provides it)."""

    index: str
    fields: Mapping[str, Any]
    retrievers: Mapping[str, Any]


@runtime_checkable
class Stage(Protocol):
    name: str
    kind: str  # the config type, e.g. "cross_encoder"
    cost_unit: str  # what ``scored`` counts: pairs, rows, calls, tokens
    rerank: int | None
    keep: int | None
    reads_features: bool
    text_fields: tuple[str, ...]

    async def __call__(self, query: "Query", candidates: Candidates, deadline: float | None) -> Candidates: ...

    def describe(self) -> dict[str, Any]: ...

    def cost_units(self, n: int) -> int: ...

    def model_stamp(self) -> str | None: ...

    async def close(self) -> None: ...


@dataclass
class BuildContext:
    """What a stage may need to build itself, shared by every profile of one opened index.

    ``scorer`` composes a pair scorer (runtime, micro-batcher, pair-score cache)
    and memoizes it by key, so two profiles naming the same model share one
    loaded model, one batcher and one cache namespace.
    """

    settings: "Settings"
    index: Any  # the IndexConfig (typed loosely: stages must not import cascade.config)
    feature_names: list[str] | None = None  # the profile's feature set, for stages that score features
    file: str = ""  # the config file, for errors
    key: str = "stages"  # key path of the stage being built, e.g. "profiles.ce-deep.stages.1"
    pair_store: Any = None  # where pair scores are cached (None: not cached)
    pair_ttl_s: float = 86_400
    on_pair_lookup: Callable[[str, int, int], None] | None = None  # (index, found, scored)
    keyword_source: str | None = None  # who computes the profile's keyword features ("embedded", "opensearch")
    _scorers: dict[Any, Any] = field(default_factory=dict)

    def at(self, key: str, feature_names: list[str] | None = None,
           keyword_source: str | None = None) -> "BuildContext":
        """The same context (same memoized scorers) for the stage at ``key``."""
        return dataclasses.replace(self, key=key, feature_names=feature_names, keyword_source=keyword_source)

    def scorer(self, key: Any, load: Callable[[], Any], *, micro_batch: Any = None, cacheable: bool = False) -> Any:
        """The composed scorer for ``key`` (built once per opened index): see :mod:`cascade.models.scorers`."""
        got = self._scorers.get(key)
        if got is None:
            from cascade.models.scorers import compose

            hook = None
            if self.on_pair_lookup is not None:
                name, on = self.index.index, self.on_pair_lookup
                hook = lambda hit, miss: on(name, hit, miss)  # noqa: E731
            store = self.pair_store if cacheable else None
            got = self._scorers[key] = compose(load(), micro_batch=micro_batch, store=store, ttl_s=self.pair_ttl_s,
                                               on_lookup=hook)
        return got

    def shared(self, key: Any, load: Callable[[], Any]) -> Any:
        """Anything else a stage loads (an LTR model, a client), once per opened index under ``key``."""
        key = ("shared", key)
        if key not in self._scorers:
            self._scorers[key] = load()
        return self._scorers[key]

    def scorers(self) -> list[Any]:
        """Every composed scorer (what closing the index closes)."""
        return [v for k, v in self._scorers.items() if not (isinstance(k, tuple) and k and k[0] == "shared")]


class Combine(BaseModel):
    """How a stage's output order mixes its own score with earlier ones (like a Vespa global-phase expression).

    ``weights`` maps score names (this stage's name, an earlier stage's name, or
    ``fusion``) to weights; each score is normalized over the re-scored window
    first, so weights compare like with like.
    """

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1)
    normalize: Literal["zscore", "minmax", "rank"] = "zscore"


GATE_FEATURES = ("margin12", "margin15", "top_z", "qlen")


class EarlyExit(BaseModel):
    """Skip the stage for a query when the step before it is already confident (thresholds from ``cascade tune``).

    The signal reads only what the stage is handed: the incoming scores of the
    top ``window`` candidates (z-normalized over that window, so any scale
    works) and the query's length. ``margin``: the gap between the first and
    second incoming scores. ``gate``: a logistic model on :data:`GATE_FEATURES`
    estimating the chance that the stage would not improve this query. The
    stage is skipped when the signal reaches ``threshold``; the trace says so.
    """

    model_config = ConfigDict(extra="forbid")

    signal: Literal["margin", "gate"] = "margin"
    threshold: Annotated[float, Field(allow_inf_nan=False)]
    window: int = Field(default=10, ge=2, le=1000, description="Incoming candidates the signal reads.")
    weights: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=dict, description=f"gate: a weight per feature ({', '.join(GATE_FEATURES)}).")
    bias: Annotated[float, Field(allow_inf_nan=False)] = 0.0

    @model_validator(mode="after")
    def _fits_signal(self) -> "EarlyExit":
        if self.signal == "margin" and (self.weights or self.bias):
            raise ValueError("weights: the margin signal takes no weights or bias (those are for signal: gate)")
        if self.signal == "gate":
            if not self.weights:
                raise ValueError("weights: signal gate needs a weight per feature (`cascade tune` writes them)")
            bad = sorted(set(self.weights) - set(GATE_FEATURES))
            if bad:
                raise ValueError(f"weights.{bad[0]}: unknown gate feature (features: {', '.join(GATE_FEATURES)})")
            if not 0.0 < self.threshold < 1.0:
                raise ValueError("threshold: a gate's threshold is a probability, strictly between 0 and 1")
        return self


def exit_features(scores: np.ndarray, query_text: str, window: int = 10) -> dict[str, float] | None:
    """The gate's cheap features from the incoming scores (best first); None when fewer than 2 are finite."""
    s = np.asarray(scores, dtype=np.float64)[:window]
    s = s[np.isfinite(s)]
    if len(s) < 2:
        return None
    sd = float(s.std())
    if sd <= 0:
        z = np.zeros(len(s))
    else:
        z = (s - s.mean()) / sd
    return {"margin12": float(z[0] - z[1]), "margin15": float(z[0] - z[min(4, len(z) - 1)]), "top_z": float(z[0]),
            "qlen": float(np.log1p(len(query_text.split())))}


@dataclass(frozen=True)
class ExitDecision:
    """Why a stage was skipped for one query: the signal, its value and the threshold it reached."""

    signal: str
    value: float
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "value": round(self.value, 4), "threshold": self.threshold}

    def note(self, previous: str) -> str:
        return f"early exit: {previous} was confident ({self.signal} {self.value:.3f} >= {self.threshold:g})"


def exit_signal(cfg: EarlyExit, scores: np.ndarray, query_text: str) -> float | None:
    """The signal's value for one query (None: too few incoming scores to judge, so the stage runs)."""
    f = exit_features(scores, query_text, cfg.window)
    if f is None:
        return None
    if cfg.signal == "margin":
        return f["margin12"]
    x = cfg.bias + sum(w * f[k] for k, w in cfg.weights.items())
    return float(1.0 / (1.0 + np.exp(-x)))


def early_exit(cfg: "EarlyExit | None", scores: np.ndarray, query_text: str) -> ExitDecision | None:
    """An :class:`ExitDecision` when the stage may be skipped for this query, else None."""
    if cfg is None:
        return None
    v = exit_signal(cfg, scores, query_text)
    return ExitDecision(cfg.signal, v, cfg.threshold) if v is not None and v >= cfg.threshold else None


class StageConfigBase(BaseModel):
    """Fields every stage config has; a stage's own config subclasses this and adds ``type``."""

    model_config = ConfigDict(extra="forbid")

    cost_unit: ClassVar[str] = "rows"
    reads_features: ClassVar[bool] = False
    pair_cacheable: ClassVar[bool] = False

    name: str | None = Field(default=None, description="Name in traces and evaluation (default: the type).")
    rerank: int | None = Field(default=None, ge=1, le=10_000, description="Score only the top N incoming.")
    keep: int | None = Field(default=None, ge=1, le=10_000, description="Pass on at most N candidates.")
    combine: Combine | None = Field(default=None, description="Order by a weighted sum of normalized scores.")
    enabled: bool = Field(default=True, description="Per-profile gate: false turns the stage off.")
    early_exit: EarlyExit | None = Field(default=None, description="Skip this stage for queries the previous step "
                                         "is already confident about (see `cascade tune`).")

    @property
    def stage_name(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    def text_fields(self) -> list[str]:
        """Stored fields this stage reads (fetched for its window only, when it runs)."""
        return []

    def validate_index(self, index: IndexView, key: str) -> None:
        """Start-up checks against the index; raise ``ValueError("KEY.PATH: reason")``."""
        for f in self.text_fields():
            if f not in index.fields:
                raise ValueError(f"{key}.fields: unknown field {f!r} (fields: {sorted(index.fields)})")

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
    """The weighted sum of normalized scores over the window (the first ``len(own)`` candidates).

    A source that did not run for this query (skipped by the budget, failed, or
    cut by a prefix) adds nothing: the others still order the window.
    """
    n = len(own)
    total = np.zeros(n)
    for src, w in combine.weights.items():
        if src == name:
            col = own
        elif src in candidates.stage_scores:
            col = candidates.stage_scores[src][:n]
        else:
            continue
        col = np.where(np.isnan(col), np.nanmin(col) if np.isfinite(col).any() else 0.0, col)
        total += w * _normalize(col, combine.normalize)
    return total


def below(head_scores: np.ndarray, tail_scores: np.ndarray) -> np.ndarray:
    """``tail_scores`` shifted so that the highest is 1 below the lowest of ``head_scores`` (spacing kept)."""
    tail = np.asarray(tail_scores, dtype=np.float64)
    head = np.asarray(head_scores, dtype=np.float64)
    if not len(tail) or not np.isfinite(head).any() or not np.isfinite(tail).any():
        return tail
    floor = np.nanmin(head[np.isfinite(head)])
    top = np.nanmax(tail[np.isfinite(tail)])
    return tail - (top - floor) - 1.0 if top >= floor else tail


def apply_scores(candidates: Candidates, scores: np.ndarray, name: str, keep: int | None,
                 combine: "Combine | None" = None) -> Candidates:
    """Reorder the first ``len(scores)`` candidates by ``scores``; the rest follow in their order, below.

    ``stage_scores[name]`` keeps the stage's own score; with ``combine`` the order
    (and ``score``) follows the combination instead. The unscored rest keeps
    its previous order and spacing, shifted below the lowest re-scored hit, so
    the response's ``score`` is monotonic in rank.
    """
    n, total = len(scores), len(candidates)
    scores = np.asarray(scores, dtype=np.float64)
    rank_by = combined(candidates, scores, name, combine) if combine is not None and n else scores
    order = np.concatenate([stable_order(rank_by), np.arange(n, total)])
    own, final = np.full(total, np.nan), np.full(total, np.nan)
    own[:n], final[:n] = scores, rank_by
    out = candidates.take(order)
    out.stage_scores[name] = own[order]
    out.score = np.concatenate([final[order][:n], below(rank_by, out.score[n:])])
    out.scored[name] = n
    return out.head(keep)


class Reranker:
    """Base for stages that assign one score per candidate; subclasses implement :meth:`score`.

    A configured stage calls :meth:`configure` with its config (name, window and
    the contract's declarations come from there); tests may also build one by hand.
    """

    kind = "reranker"
    cost_unit = "rows"
    reads_features = False
    text_fields: tuple[str, ...] = ()

    def __init__(self, name: str, rerank: int | None = None, keep: int | None = None,
                 combine: Combine | None = None):
        self.name, self.rerank, self.keep, self.combine = name, rerank, keep, combine
        self.early_exit: EarlyExit | None = None

    def configure(self, cfg: StageConfigBase) -> None:
        """Name, window, combination and the contract's declarations, all from the stage's config."""
        self.name, self.rerank, self.keep, self.combine = cfg.stage_name, cfg.rerank, cfg.keep, cfg.combine
        self.early_exit = cfg.early_exit
        self.kind = cfg.type  # type: ignore[attr-defined]
        self.cost_unit = cfg.cost_unit
        self.reads_features = cfg.reads_features
        self.text_fields = tuple(cfg.text_fields())

    async def score(self, query: "Query", candidates: Candidates, deadline: float | None) -> np.ndarray:
        raise NotImplementedError

    async def __call__(self, query: "Query", candidates: Candidates, deadline: float | None) -> Candidates:
        window = candidates.head(self.rerank)
        scores = await self.score(query, window, deadline) if len(window) else np.zeros(0)
        if len(scores) != len(window):
            raise RuntimeError(f"stage {self.name} returned {len(scores)} scores for {len(window)} candidates")
        return apply_scores(candidates, scores, self.name, self.keep, self.combine)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.kind, "rerank": self.rerank, "keep": self.keep,
                             "cost_unit": self.cost_unit}
        if self.combine is not None:
            d["combine"] = f"{self.combine.normalize}: " + " + ".join(f"{w:g}*{k}" for k, w in self.combine.weights.items())
        if self.early_exit is not None:
            d["early_exit"] = f"{self.early_exit.signal} >= {self.early_exit.threshold:g}"
        return d

    def cost_units(self, n: int) -> int:
        """Cost units (``cost_unit``) scoring ``n`` candidates takes: what latency budgets are planned in.
        One per candidate here; a stage that works per call over many candidates says otherwise."""
        return n

    def model_stamp(self) -> str | None:
        return None

    async def close(self) -> None:
        return None
