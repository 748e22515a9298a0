"""Evaluating every step of a cascade from one pass over the queries.

Each search records a trace per step, so one run gives each retriever's, the
fusion's and each stage's ranking and timing: nothing is run twice. A stage's
ranking is its full output (re-scored candidates first, the rest in the
previous order), which is what a user of a cascade cut at that step would get.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from cascade.controller import Cascade
from cascade.errors import CascadeError, DatasetError
from cascade.query import Query

MEASURES = {"ndcg@10": nDCG @ 10, "recall@30": R @ 30, "recall@100": R @ 100, "mrr@10": RR @ 10}


@dataclass
class StageMetrics:
    name: str
    kind: str
    ndcg_10: float
    recall_30: float
    recall_100: float
    mrr_10: float
    p50_ms: float  # cumulative: from the start of the search to the end of this step (retrievers: their own)
    p95_ms: float
    ce_pairs_per_query: float
    step_p50_ms: float  # this step alone

    def as_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "ndcg@10": round(self.ndcg_10, 4),
                "recall@30": round(self.recall_30, 4), "recall@100": round(self.recall_100, 4), "mrr@10": round(self.mrr_10, 4),
                "p50_ms": round(self.p50_ms, 2), "p95_ms": round(self.p95_ms, 2),
                "ce_pairs_per_query": round(self.ce_pairs_per_query, 2), "step_p50_ms": round(self.step_p50_ms, 2)}


@dataclass
class EvalReport:
    dataset: str
    split: str
    index: str
    config_version: str
    queries: int
    skipped_queries: int
    stages: list[StageMetrics]
    seconds: float
    plan: list[dict] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"dataset": self.dataset, "split": self.split, "index": self.index,
                "config_version": self.config_version, "queries": self.queries,
                "skipped_queries": self.skipped_queries, "seconds": round(self.seconds, 1),
                "plan": self.plan, "stages": [s.as_json() for s in self.stages]}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


async def evaluate(
    cascade: Cascade,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    dataset: str,
    split: str,
    limit: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Run every judged query once, sequentially (so latencies are not inflated by each other)."""
    judged = [q for q in qrels if q in queries]
    unknown = [q for q in qrels if q not in queries]
    if not judged:
        raise DatasetError(f"none of the {len(qrels)} judged query ids is in queries.jsonl (e.g. {unknown[:3]})")
    if limit:
        judged = judged[:limit]
    runs: dict[str, dict[str, dict[str, float]]] = {}
    kinds: dict[str, str] = {}
    cum_ms: dict[str, list[float]] = {}
    step_ms: dict[str, list[float]] = {}
    pairs: dict[str, list[int]] = {}
    skipped = 0
    t0 = time.perf_counter()
    size = min(10, cascade.config.limits.max_size)
    for n, qid in enumerate(judged, start=1):
        try:
            res = await cascade.search(Query(text=queries[qid], size=size, id=qid))
        except CascadeError:
            skipped += 1  # e.g. an empty query text in the dataset: counted, not silently dropped
            continue
        ce = 0
        for tr in res.traces:
            if tr.kind == "features":  # computes, does not rank: its time shows in the next step's p50
                continue
            kinds[tr.name] = tr.kind
            ranking = tr.ids or ["__no_result__"]
            runs.setdefault(tr.name, {})[qid] = {d: float(len(ranking) - i) for i, d in enumerate(ranking)}
            if tr.kind == "cross_encoder":
                ce += tr.scored
            cum_ms.setdefault(tr.name, []).append(tr.ms if tr.kind == "retriever" else tr.elapsed_ms)
            step_ms.setdefault(tr.name, []).append(tr.ms)
            pairs.setdefault(tr.name, []).append(0 if tr.kind == "retriever" else ce)
        if on_progress:
            on_progress(n, len(judged))
    evaluated = {q: qrels[q] for q in judged}
    stages = []
    for name, run in runs.items():
        # Queries a step returned nothing for still count (as zeros), so steps are comparable.
        for q in evaluated:
            run.setdefault(q, {"__no_result__": 1.0})
        agg = ir_measures.calc_aggregate(list(MEASURES.values()), evaluated, run)
        stages.append(StageMetrics(
            name=name, kind=kinds[name],
            ndcg_10=float(agg[MEASURES["ndcg@10"]]), recall_30=float(agg[MEASURES["recall@30"]]),
            recall_100=float(agg[MEASURES["recall@100"]]),
            mrr_10=float(agg[MEASURES["mrr@10"]]),
            p50_ms=percentile(cum_ms[name], 50), p95_ms=percentile(cum_ms[name], 95),
            ce_pairs_per_query=statistics.fmean(pairs[name]), step_p50_ms=percentile(step_ms[name], 50),
        ))
    return EvalReport(dataset=dataset, split=split, index=cascade.config.index,
                      config_version=cascade.config.version, queries=len(judged) - skipped,
                      skipped_queries=skipped, stages=stages, seconds=time.perf_counter() - t0,
                      plan=cascade.plan())
