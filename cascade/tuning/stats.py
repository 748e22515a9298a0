"""The statistics tuning rests on: per-query nDCG@10, folds by query, paired bootstrap intervals, Pareto fronts.

Everything here works per query, because queries are the unit of sampling:
a stage's gain is a paired difference (the same query with and without it),
its confidence interval comes from resampling queries, and cross-validation
folds never split one query's candidates between selecting and scoring.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

CUTOFF = 10


class Judgments:
    """One query's graded judgments, ready to score a ranking's nDCG@10 the way trec_eval does.

    Gains are the relevance grades (linear, as trec_eval's ``ndcg_cut``), the
    discount is log2(rank + 1), and the ideal ranking is every judged relevant
    document of the query, not only the retrieved ones: a ranking that misses a
    relevant document is penalized for it. Grades <= 0 are not relevant.
    """

    __slots__ = ("gain", "idcg")

    def __init__(self, qrels: dict[str, int], cutoff: int = CUTOFF):
        self.gain = {d: float(g) for d, g in qrels.items() if g > 0}
        ideal = sorted(self.gain.values(), reverse=True)[:cutoff]
        self.idcg = float(sum(g / np.log2(i + 2) for i, g in enumerate(ideal)))

    def ndcg(self, ranking: Sequence[str], cutoff: int = CUTOFF) -> float:
        if self.idcg <= 0:
            return 0.0
        gain = self.gain
        dcg = 0.0
        for i, d in enumerate(ranking[:cutoff]):
            g = gain.get(d)
            if g:
                dcg += g / np.log2(i + 2)
        return dcg / self.idcg


def folds_by_query(qids: Sequence[str], k: int, seed: int = 13) -> list[list[str]]:
    """``k`` folds of whole queries (a seeded permutation dealt round-robin, as the LTR cross-validation does)."""
    if k < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    if len(qids) < k:
        raise ValueError(f"{len(qids)} queries cannot make {k} folds")
    perm = list(np.random.default_rng(seed).permutation(list(qids)))
    return [sorted(perm[f::k], key=list(qids).index) for f in range(k)]


@dataclass(frozen=True)
class Interval:
    """A paired difference's mean and its 95% bootstrap interval over queries."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"mean": round(self.mean, 5), "ci_low": round(self.low, 5), "ci_high": round(self.high, 5), "n": self.n}


def paired_bootstrap(a: Iterable[float], b: Iterable[float], *, confidence: float = 0.95, resamples: int = 10_000,
                     seed: int = 13) -> Interval:
    """Mean of ``a - b`` over queries with a paired bootstrap interval (queries resampled, pairs kept together).

    BCa intervals from :func:`scipy.stats.bootstrap`; when every difference is
    the same (BCa is undefined there) the interval is that value.
    """
    from scipy.stats import bootstrap

    x, y = np.asarray(list(a), dtype=np.float64), np.asarray(list(b), dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("paired_bootstrap needs two equally long 1-d samples (one value per query)")
    n = len(x)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    d = x - y
    mean = float(d.mean())
    if n < 2 or np.allclose(d, d[0]):
        return Interval(mean, float(d[0]) if n else mean, float(d[0]) if n else mean, n)

    def stat(u, v, axis=-1):
        return np.mean(u - v, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's degenerate-jackknife warnings: handled below
        res = bootstrap((x, y), stat, paired=True, vectorized=True, n_resamples=resamples,
                        confidence_level=confidence, method="BCa", random_state=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            res = bootstrap((x, y), stat, paired=True, vectorized=True, n_resamples=resamples,
                            confidence_level=confidence, method="percentile",
                            random_state=np.random.default_rng(seed))
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(mean, lo, hi, n)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (cost lower or equal AND quality higher or equal,
    one of them strictly), ordered by cost. ``points`` are (cost, quality)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    out: list[int] = []
    best = -np.inf
    for i in order:
        if points[i][1] > best:
            out.append(i)
            best = points[i][1]
    return out
