"""What one collection pass holds: per-query scores and lists, the machine's unit costs, and the grid's inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from cascade.candidates import Candidates
from cascade.tuning.space import FusionVariant, Space, StageSpec
from cascade.tuning.stats import Judgments


@dataclass
class UnitCost:
    """Milliseconds of one call that handles ``units`` items: ``fixed + per_unit * units`` (0 when nothing runs)."""

    unit: str
    fixed: float = 0.0
    per_unit: float = 0.0
    calls: int = 0

    def ms(self, units: float) -> float:
        return self.fixed + self.per_unit * units if units else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "fixed_ms": round(self.fixed, 4), f"ms_per_{self.unit.rstrip('s')}":
                round(self.per_unit, 5), "calls_measured": self.calls}


def fit_cost(unit: str, obs: Sequence[tuple[int, float]]) -> UnitCost:
    """``ms = fixed + per_unit * n`` by non-negative least squares over measured calls (n, ms)."""
    from scipy.optimize import nnls

    pts = [(n, ms) for n, ms in obs if n > 0 and np.isfinite(ms)]
    if not pts:
        return UnitCost(unit)
    a = np.array([[1.0, float(n)] for n, _ in pts])
    b = np.array([ms for _, ms in pts])
    if len({n for n, _ in pts}) < 2:  # one size only: no way to split fixed from per-unit
        return UnitCost(unit, 0.0, float(b.mean() / pts[0][0]), len(pts))
    (fixed, per), _ = nnls(a, b)
    return UnitCost(unit, float(fixed), float(per), len(pts))


@dataclass
class QueryData:
    """What the sweep needs of one query."""

    qid: str
    text: str
    judgments: Judgments
    hits: dict[str, list[str]]  # each retriever's ranking
    hit_scores: dict[str, list[float]] = field(default_factory=dict)  # and its scores (to fuse without one)
    variants: list[Candidates] = field(default_factory=list)  # per fusion variant: the fused set (ROW column)
    rows: list[dict[str, np.ndarray]] = field(default_factory=list)  # per variant: row stage -> score per row
    pairs: dict[str, dict[str, float]] = field(default_factory=dict)  # pair stage -> document -> score
    retrieval_ms: float = 0.0
    retriever_ms: dict[str, float] = field(default_factory=dict)
    fusion_ms: list[float] = field(default_factory=list)


@dataclass
class Collected:
    """The tuning data of one split: per-query scores and the machine's measured unit costs."""

    dataset: str
    split: str
    index: str
    profile: str
    retrievers: list[str]
    variants: list[FusionVariant]
    specs: list[StageSpec]
    queries: list[QueryData]
    costs: dict[str, UnitCost]  # "features" and each stage, by name
    fusion_cfgs: list[Any]
    reads_features: bool
    space: Space
    notes: list[str] = field(default_factory=list)
    in_sample: dict[str, str] = field(default_factory=dict)  # stage -> why its scores here are in-sample
    cross_fit: dict[str, int] = field(default_factory=dict)  # stage -> folds it was cross-fitted over
    skipped: int = 0  # invalid query texts
    failed: int = 0  # queries every retriever failed on
    embed_ms: float | None = None  # the query embedding alone (part of a kNN retriever's time)
    corpus_docs: int | None = None
    recall: dict[str, dict[int, float]] = field(default_factory=dict)  # retriever (and fusion) -> k -> recall@k
    loaded_costs: dict[str, UnitCost] = field(default_factory=dict)  # fitted on the collection's own (loaded) calls
    retriever_samples: dict[str, list[float]] = field(default_factory=dict)  # calibrated per-query retriever ms
    calibration: dict[str, int] = field(default_factory=dict)

    @property
    def qids(self) -> list[str]:
        return [q.qid for q in self.queries]


