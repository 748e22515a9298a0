"""Benchmarks that back the numbers in docs/benchmarks.md (run by `make bench`).

Timings are medians and tail percentiles over many queries measured in one
process, never assertions in unit tests: these machines are noisy.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cascade.controller import Cascade
from cascade.query import Query
from cascade.stages.ltr import LTRStage


@dataclass
class LTRLatency:
    queries: int
    candidates_mean: float
    features_p50_ms: float
    features_p95_ms: float
    predict_p50_ms: float
    predict_p95_ms: float
    total_p50_ms: float
    total_p95_ms: float


def ltr_latency(cascade: Cascade, queries: list[str], on_progress: Callable[[int, int], None] | None = None,
                repeats: int = 3) -> LTRLatency:
    """Time feature extraction + LightGBM scoring on each query's fused candidates (retrieval not timed)."""
    ltr = next((s for s in cascade.stages if isinstance(s, LTRStage)), None)
    if ltr is None or cascade.features is None:
        raise ValueError("the cascade has no ltr stage with features")
    feats, preds, totals, sizes = [], [], [], []
    for n, text in enumerate(queries, start=1):
        q = cascade.validate(Query(text=text))
        cands, _ = asyncio.run(cascade.candidates(q))
        sizes.append(len(cands))
        best = None
        for _ in range(repeats):  # best of a few: scheduler noise only ever adds time
            t0 = time.perf_counter()
            x = cascade.features.compute(q, cands)
            t1 = time.perf_counter()
            ltr.model.predict(x)
            t2 = time.perf_counter()
            if best is None or t2 - t0 < best[2]:
                best = (t1 - t0, t2 - t1, t2 - t0)
        feats.append(best[0] * 1e3)
        preds.append(best[1] * 1e3)
        totals.append(best[2] * 1e3)
        if on_progress:
            on_progress(n, len(queries))
    p = lambda v, q: float(np.percentile(v, q))  # noqa: E731
    return LTRLatency(len(queries), float(np.mean(sizes)), p(feats, 50), p(feats, 95), p(preds, 50), p(preds, 95),
                      p(totals, 50), p(totals, 95))


@dataclass
class Arm:
    """One pipeline's per-query rankings, latencies and cross-encoder pairs."""

    name: str
    run: dict[str, dict[str, float]]
    ms: list[float]
    pairs: list[int]

    def summary(self, qrels: dict[str, dict[str, int]]) -> dict[str, float]:
        import ir_measures
        from ir_measures import nDCG

        m = nDCG @ 10
        judged = {q: qrels[q] for q in self.run}
        return {"ndcg@10": round(float(ir_measures.calc_aggregate([m], judged, self.run)[m]), 4),
                "ce_pairs_per_query": round(float(np.mean(self.pairs)), 1),
                "p50_ms": round(float(np.percentile(self.ms, 50)), 1),
                "p95_ms": round(float(np.percentile(self.ms, 95)), 1)}


def _as_run(ids: list[str]) -> dict[str, float]:
    return {d: float(len(ids) - i) for i, d in enumerate(ids)} or {"__none__": 0.0}


def naive_vs_cascade(cascade: Cascade, queries: dict[str, str], qrels: dict[str, dict[str, int]], *,
                     naive_depth: int = 100, depths: tuple[int, ...] = (), limit: int | None = None,
                     on_progress: Callable[[int, int], None] | None = None) -> dict[str, Arm]:
    """The pipeline everyone writes first (BM25 top 100, cross-encoder on all pairs) beside the cascade.

    Both use the cascade's own cross-encoder and run one after the other on each
    query (alternating which goes first), in one process, so their latencies
    share the same machine state. ``depths`` adds cascade variants whose
    cross-encoder re-scores that many candidates, for the quality/latency curve.
    """
    from cascade.stages.cross_encoder import CrossEncoderStage

    ce = next((s for s in cascade.stages if isinstance(s, CrossEncoderStage)), None)
    if ce is None:
        raise ValueError("the cascade has no cross_encoder stage to compare")
    bm25 = next((r for n, r in cascade.retrievers.items() if cascade.config.retrievers[n].type == "bm25"), None)
    if bm25 is None:
        raise ValueError("the cascade has no bm25 retriever for the naive pipeline")
    qids = [q for q in qrels if q in queries][:limit]
    depths = tuple(d for d in dict.fromkeys(depths) if d != ce.rerank)  # the default arm already runs its own depth
    arms = {k: Arm(k, {}, [], []) for k in ("naive", "cascade", *(f"cascade@{d}" for d in depths))}

    async def naive(q: Query) -> tuple[list[str], int]:
        hits = await bm25.retrieve(q, naive_depth)
        docs = await cascade.documents.fetch([h.id for h in hits])
        texts = [" ".join(str(d.get(f)) for f in ce.cfg.fields if d and d.get(f)) for d in docs]
        scores = await asyncio.to_thread(ce.scorer.score, q.text, texts)
        order = np.argsort(-scores, kind="stable")
        return [hits[i].id for i in order][:10], len(hits)

    async def with_depth(q: Query, depth: int | None) -> tuple[list[str], int]:
        saved = ce.rerank
        ce.rerank = depth if depth is not None else saved
        try:
            res = await cascade.search(q)
        finally:
            ce.rerank = saved
        return res.candidates.ids[:10], sum(t.scored for t in res.traces if t.kind == "cross_encoder")

    for n, qid in enumerate(qids, start=1):
        q = cascade.validate(Query(text=queries[qid], id=qid))
        jobs = [("naive", lambda: naive(q)), ("cascade", lambda: with_depth(q, None))]
        jobs += [(f"cascade@{d}", (lambda d=d: with_depth(q, d))) for d in depths]
        if n % 2 == 0:
            jobs.reverse()
        for name, job in jobs:
            t = time.perf_counter()
            ids, pairs = asyncio.run(job())
            arms[name].ms.append((time.perf_counter() - t) * 1e3)
            arms[name].run[qid] = _as_run(ids)
            arms[name].pairs.append(pairs)
        if on_progress:
            on_progress(n, len(qids))
    return arms


def combination_sweep(cascade: Cascade, queries: dict[str, str], qrels: dict[str, dict[str, int]], *,
                      depths: tuple[int, ...] = (10, 20, 30),
                      weights: tuple[tuple[float, float], ...] = ((1, 0), (1, 1), (1, 2), (1, 3), (2, 1)),
                      norms: tuple[str, ...] = ("zscore", "minmax", "rank"), limit: int | None = None,
                      on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """nDCG@10 of the cross-encoder stage's order for each depth, normalization and (CE, previous) weights.

    The cross-encoder scores each query's top ``max(depths)`` once; every variant
    is then an arithmetic re-ordering of the same scores, so the comparison is
    exact and cheap. Weight (1, 0) is the cross-encoder alone.
    """
    import ir_measures
    from ir_measures import nDCG

    from cascade.stages.base import _normalize
    from cascade.stages.cross_encoder import CrossEncoderStage

    i = max((k for k, s in enumerate(cascade.stages) if isinstance(s, CrossEncoderStage)), default=None)
    if i is None or i == 0:
        raise ValueError("the cascade needs a stage before its cross_encoder stage to combine with")
    ce, prev = cascade.stages[i], cascade.stages[i - 1]
    head = Cascade(cascade.config, cascade.retrievers, cascade.stages[:i], cascade.documents, cascade.features)
    qids = [q for q in qrels if q in queries][:limit]
    rows = {}
    for n, qid in enumerate(qids, start=1):
        res = asyncio.run(head.search(head.validate(Query(text=queries[qid], id=qid))))
        c = res.candidates
        top = c.head(max(depths))
        ce_scores = ce.scorer.score(queries[qid], [top.text(j, ce.cfg.fields) for j in range(len(top))])
        rows[qid] = (list(c.ids), np.asarray(c.stage_scores[prev.name], dtype=np.float64), ce_scores)
        if on_progress:
            on_progress(n, len(qids))
    m = nDCG @ 10
    judged = {q: qrels[q] for q in rows}

    def ndcg(order_of) -> float:
        run = {}
        for q, (ids, prev_s, ce_s) in rows.items():
            head_order = order_of(prev_s, ce_s)
            rest = [j for j in range(len(ids)) if j not in set(head_order)]
            ranking = [ids[j] for j in list(head_order) + rest]
            run[q] = _as_run(ranking)
        return round(float(ir_measures.calc_aggregate([m], judged, run)[m]), 4)

    out = [{"depth": 0, "normalize": "-", "w_ce": 0, "w_prev": 1, "ndcg@10": ndcg(lambda p, c: [])}]
    for d in depths:
        for norm in norms:
            for w_ce, w_prev in weights:
                if w_prev == 0 and norm != norms[0]:
                    continue  # the cross-encoder alone does not depend on the normalization

                def order(p, c, d=d, norm=norm, w_ce=w_ce, w_prev=w_prev):
                    k = min(d, len(c))
                    s = w_ce * _normalize(c[:k], norm) + (w_prev * _normalize(p[:k], norm) if w_prev else 0)
                    return list(np.argsort(-s, kind="stable"))

                out.append({"depth": d, "normalize": norm if w_prev else "-", "w_ce": w_ce, "w_prev": w_prev,
                            "ndcg@10": ndcg(order)})
    return out
