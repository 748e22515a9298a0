"""How alike two rankings of one query are, and how good each is when the query is judged.

Rank-biased overlap (Webber, Moffat and Zobel 2010, "A similarity measure for
indefinite rankings") weighs agreement at the top more than further down
(``p`` = 0.9 puts about 86% of the weight on the first 10 ranks) and, unlike
Kendall's tau, needs no shared set of documents. What is computed is RBO_ext,
the extrapolated value (say so wherever it is shown: it is not the lower bound
RBO_min). The one package on PyPI that computes it (``rbo``) pins numpy below 2,
so it is the lines below, tested against the definition and against values
from that package in tests/test_ui_api.py.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import ir_measures
from ir_measures import nDCG


def rbo(a: Sequence[str], b: Sequence[str], p: float = 0.9, depth: int | None = None) -> float:
    """Extrapolated rank-biased overlap, RBO_ext (eq. 32 of the paper, the form for lists of uneven length),
    of the first ``depth`` items of ``a`` and ``b`` (default: all of them): 1 for the same order, 0 for
    nothing in common.

    RBO_ext is a point estimate, not the lower bound RBO_min: it assumes the agreement seen down to the end
    of the lists goes on below it. The shorter list is taken as complete (a profile that returned fewer
    documents has no more to give), so a list of 3 against one of 10 is scored on all 10, not cut to 3.
    """
    if not 0 < p < 1:
        raise ValueError("p must be strictly between 0 and 1")
    if depth is not None:
        a, b = a[:depth], b[:depth]
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    s, l = len(short), len(long_)
    if s == 0:
        return 1.0 if l == 0 else 0.0
    seen_s: set[str] = set()
    seen_l: set[str] = set()
    x = 0  # X_d: items the two lists share down to depth d (the short one counted whole beyond its end)
    x_s = 0
    total = 0.0
    for d in range(1, l + 1):
        y = long_[d - 1]
        if d <= s:
            z = short[d - 1]
            if z == y:
                x += 1
            else:
                x += (z in seen_l) + (y in seen_s)
            seen_s.add(z)
            if d == s:
                x_s = x
        else:
            x += y in seen_s
            total += x_s * (d - s) / (s * d) * p ** d
        seen_l.add(y)
        total += x / d * p ** d
    return (1 - p) / p * total + ((x - x_s) / l + x_s / s) * p ** l


def jaccard_at(a: Sequence[str], b: Sequence[str], k: int) -> float:
    sa, sb = set(a[:k]), set(b[:k])
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def overlap_at(a: Sequence[str], b: Sequence[str], k: int) -> int:
    """Documents the two top ``k`` share."""
    return len(set(a[:k]) & set(b[:k]))


def ndcg_at_10(ranking: Sequence[str], labels: Mapping[str, int]) -> float | None:
    """nDCG@10 of one ranked list against one query's graded labels (unjudged = not relevant, as in
    ``cascade eval``); None when the query has no relevant judgment."""
    if not any(g > 0 for g in labels.values()):
        return None
    qrels = {"q": {d: int(g) for d, g in labels.items()}}
    run = {"q": {d: float(len(ranking) - i) for i, d in enumerate(ranking)} or {"__none__": 0.0}}
    return float(ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10])


def judged_at(ranking: Sequence[str], labels: Mapping[str, int], k: int = 10) -> int:
    """How many of the top ``k`` carry a judgment (of any grade): how far nDCG@10 can be trusted."""
    return sum(1 for d in ranking[:k] if d in labels)
