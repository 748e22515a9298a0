"""Cross-encoder backends side by side: the same (query, candidate) pairs through each backend, in one run.

Speed and quality are only comparable when every backend sees the same pairs
on the same machine at the same time, so each query's candidates are scored by
every backend in turn (the order rotates from query to query, so that no
backend always runs first after retrieval or last before the next query) and
each query yields one pairs-per-second figure per backend. Medians over queries
are reported, never single timings: these machines are shared and noisy.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import ir_measures
import numpy as np
from ir_measures import nDCG

from cascade.controller import Cascade
from cascade.query import Query
from connectors.rerankers import PairScorer


@dataclass
class BackendResult:
    name: str
    pairs_per_s: float  # median over queries of (pairs scored / seconds for that query's call)
    p50_ms: float  # median milliseconds per query (all `depth` pairs)
    ndcg_10: float
    spearman: float  # mean per-query rank correlation with the reference backend's scores
    max_abs_diff: float  # largest score difference from the reference backend, over all pairs


@dataclass
class BackendBench:
    queries: int
    depth: int
    pairs_mean: float
    fusion_ndcg_10: float
    reference: str
    results: list[BackendResult] = field(default_factory=list)

    def by_name(self) -> dict[str, BackendResult]:
        return {r.name: r for r in self.results}


def _ranking(ids: list[str], scores: np.ndarray | None) -> dict[str, float]:
    """The first len(scores) ids reordered by score (stable), the rest as they were: as the stage would return them."""
    n = 0 if scores is None else len(scores)
    head = list(range(n)) if scores is None else [int(i) for i in np.argsort(-scores, kind="stable")]
    order = [ids[i] for i in head] + ids[n:]
    return {d: float(len(order) - r) for r, d in enumerate(order)}


def compare_backends(cascade: Cascade, queries: dict[str, str], qrels: dict[str, dict[str, int]],
                     scorers: dict[str, PairScorer], fields: list[str], depth: int = 20,
                     on_progress: Callable[[int, int], None] | None = None) -> BackendBench:
    """Score each judged query's top ``depth`` fused candidates with every scorer; the first scorer is the reference."""
    names = list(scorers)
    judged = [q for q in qrels if q in queries]
    if not judged or not names:
        raise ValueError("nothing to compare: no judged queries or no backends")
    rate: dict[str, list[float]] = {n: [] for n in names}
    ms: dict[str, list[float]] = {n: [] for n in names}
    rho: dict[str, list[float]] = {n: [] for n in names}
    diff = {n: 0.0 for n in names}
    runs: dict[str, dict[str, dict[str, float]]] = {n: {} for n in [*names, "fusion"]}
    sizes = []
    warm = False
    for k, qid in enumerate(judged, start=1):
        q = cascade.validate(Query(text=queries[qid]))
        cands, _ = asyncio.run(cascade.candidates(q))
        docs = [cands.text(i, fields) for i in range(min(depth, len(cands)))]
        sizes.append(len(docs))
        runs["fusion"][qid] = _ranking(cands.ids, None) or {"__no_result__": 1.0}
        if not docs:
            for n in names:
                runs[n][qid] = {"__no_result__": 1.0}
            continue
        if not warm:  # first calls pay for lazy initialisation (thread pools, allocator): not what a query costs
            for s in scorers.values():
                s.score(q.text, docs)
            warm = True
        got: dict[str, np.ndarray] = {}
        for n in names[k % len(names):] + names[: k % len(names)]:
            t0 = time.perf_counter()
            got[n] = np.asarray(scorers[n].score(q.text, docs), dtype=np.float64)
            dt = time.perf_counter() - t0
            rate[n].append(len(docs) / dt)
            ms[n].append(dt * 1e3)
        ref = got[names[0]]
        for n in names:
            runs[n][qid] = _ranking(cands.ids, got[n])
            diff[n] = max(diff[n], float(np.abs(got[n] - ref).max()))
            if len(docs) > 2:
                from scipy.stats import spearmanr

                r = spearmanr(got[n], ref).statistic
                rho[n].append(1.0 if np.isnan(r) else float(r))
        if on_progress:
            on_progress(k, len(judged))
    evaluated = {q: qrels[q] for q in judged}
    ndcg = {n: float(ir_measures.calc_aggregate([nDCG @ 10], evaluated, run)[nDCG @ 10]) for n, run in runs.items()}
    bench = BackendBench(len(judged), depth, float(np.mean(sizes)), ndcg["fusion"], names[0])
    for n in names:
        bench.results.append(BackendResult(
            n, statistics.median(rate[n]) if rate[n] else float("nan"),
            statistics.median(ms[n]) if ms[n] else float("nan"), ndcg[n],
            statistics.fmean(rho[n]) if rho[n] else float("nan"), diff[n]))
    return bench


def markdown(bench: BackendBench, command: str, machine: str, notes: list[str]) -> str:
    ref = bench.by_name()[bench.reference]
    lines = [f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"{bench.queries} queries; each backend scores the same top {bench.depth} fused candidates per query "
             f"({bench.pairs_mean:.1f} pairs on average), in rotating order; the ranking is those candidates in "
             f"the backend's order followed by the rest in fusion order (fusion alone: nDCG@10 "
             f"{bench.fusion_ndcg_10:.4f}).", "",
             f"| backend | pairs/s (median) | × {bench.reference} | ms/query (p50) | nDCG@10 | Δ nDCG@10 | "
             f"Spearman vs {bench.reference} | max abs Δ score |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in bench.results:
        lines.append(f"| {r.name} | {r.pairs_per_s:.1f} | {r.pairs_per_s / ref.pairs_per_s:.2f} | {r.p50_ms:.0f} | "
                     f"{r.ndcg_10:.4f} | {r.ndcg_10 - ref.ndcg_10:+.4f} | {r.spearman:.4f} | {r.max_abs_diff:.3g} |")
    lines += [""] + notes + [""]
    return "\n".join(lines)
