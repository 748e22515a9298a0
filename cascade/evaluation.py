"""Evaluating every step of one or more rank profiles from one pass over the queries.

Each search records a trace per step, so one run gives each retriever's, the
fusion's and each stage's ranking and timing: nothing is run twice. Several
profiles of an index are evaluated on the same queries with the candidates
retrieved once per query (:meth:`Cascade.retrieve`), each then ranked by its
own fusion, features and stages, exactly as the service would rank them
(same cascade objects, same text normalization, no latency budget unless one
is asked for). A stage's ranking is its full output (re-scored candidates
first, the rest in the previous order), which is what a user of a cascade cut
at that step would get.

What is counted, not hidden: a query whose text is invalid is skipped (and
counted); a query the backend failed on counts as a failure (every step 0 on
it); a step that failed on a query ranks nothing for it (0) and its
``failed`` count says how often, instead of being scored as if it had run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from cascade.controller import Cascade, SearchResult
from cascade.errors import DatasetError, QueryError
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
    ce_pairs_per_query: float  # cumulative work in pairs (what cross-encoder-like stages count), to this step
    step_p50_ms: float  # this step alone
    cost_per_query: dict[str, float] = field(default_factory=dict)  # cumulative work by cost unit, to this step
    failed: int = 0  # queries on which this step failed (it ranks nothing for them)

    def as_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "ndcg@10": round(self.ndcg_10, 4),
                "recall@30": round(self.recall_30, 4), "recall@100": round(self.recall_100, 4), "mrr@10": round(self.mrr_10, 4),
                "p50_ms": round(self.p50_ms, 2), "p95_ms": round(self.p95_ms, 2),
                "ce_pairs_per_query": round(self.ce_pairs_per_query, 2), "step_p50_ms": round(self.step_p50_ms, 2),
                "cost_per_query": {k: round(v, 2) for k, v in self.cost_per_query.items()}, "failed": self.failed}


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
    profile: str = "default"
    failed_queries: int = 0  # the backend failed on them: every step counts 0 there
    errors: list[str] = field(default_factory=list)  # the first few failures, for the person reading the report

    def as_json(self) -> dict:
        return {"dataset": self.dataset, "split": self.split, "index": self.index, "profile": self.profile,
                "config_version": self.config_version, "queries": self.queries,
                "skipped_queries": self.skipped_queries, "failed_queries": self.failed_queries,
                "errors": self.errors, "seconds": round(self.seconds, 1),
                "plan": self.plan, "stages": [s.as_json() for s in self.stages]}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


class _Collect:
    """One profile's per-step rankings, times and costs over the queries."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, dict[str, float]]] = {}
        self.kinds: dict[str, str] = {}
        self.cum_ms: dict[str, list[float]] = {}
        self.step_ms: dict[str, list[float]] = {}
        self.cost: dict[str, list[dict[str, int]]] = {}
        self.failed: dict[str, int] = {}
        self.failed_queries = 0
        self.errors: list[str] = []

    def add(self, qid: str, res: SearchResult) -> None:
        so_far: dict[str, int] = {}
        for tr in res.traces:
            if tr.kind == "features":  # computes, does not rank: its time shows in the next step's p50
                continue
            self.kinds[tr.name] = tr.kind
            if tr.error:
                self.failed[tr.name] = self.failed.get(tr.name, 0) + 1
                if len(self.errors) < 5:
                    self.errors.append(f"query {qid}: step {tr.name} failed: {tr.error}")
                ranking = ["__failed__"]
            else:
                ranking = tr.ids or ["__no_result__"]
                for unit, n in tr.costs().items():  # its cost unit, and what it metered (an LLM's tokens)
                    so_far[unit] = so_far.get(unit, 0) + n
            self.runs.setdefault(tr.name, {})[qid] = {d: float(len(ranking) - i) for i, d in enumerate(ranking)}
            self.cum_ms.setdefault(tr.name, []).append(tr.ms if tr.kind == "retriever" else tr.elapsed_ms)
            self.step_ms.setdefault(tr.name, []).append(tr.ms)
            self.cost.setdefault(tr.name, []).append(dict(so_far))

    def fail(self, qid: str, exc: BaseException) -> None:
        self.failed_queries += 1
        if len(self.errors) < 5:
            self.errors.append(f"query {qid}: {type(exc).__name__}: {exc}")

    def stages(self, evaluated: dict[str, dict[str, int]]) -> list[StageMetrics]:
        out = []
        for name, run in self.runs.items():
            # Queries a step returned nothing for (or failed on) still count, as zeros, so steps are comparable.
            for q in evaluated:
                run.setdefault(q, {"__no_result__": 1.0})
            agg = ir_measures.calc_aggregate(list(MEASURES.values()), evaluated, run)
            units = sorted({u for c in self.cost[name] for u in c})
            cost = {u: statistics.fmean(c.get(u, 0) for c in self.cost[name]) for u in units}
            out.append(StageMetrics(
                name=name, kind=self.kinds[name],
                ndcg_10=float(agg[MEASURES["ndcg@10"]]), recall_30=float(agg[MEASURES["recall@30"]]),
                recall_100=float(agg[MEASURES["recall@100"]]), mrr_10=float(agg[MEASURES["mrr@10"]]),
                p50_ms=percentile(self.cum_ms[name], 50), p95_ms=percentile(self.cum_ms[name], 95),
                ce_pairs_per_query=cost.get("pairs", 0.0), step_p50_ms=percentile(self.step_ms[name], 50),
                cost_per_query=cost, failed=self.failed.get(name, 0),
            ))
        return out


async def evaluate_profiles(
    cascades: Sequence[Cascade],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    dataset: str,
    split: str,
    limit: int | None = None,
    budget_ms: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[EvalReport]:
    """Every step of each cascade (profiles of one index) on the same queries, retrieving once per query.

    Queries run one at a time (so latencies are not inflated by each other);
    within a query the profiles run in turn on the same retrieved candidates.
    No latency budget applies unless ``budget_ms`` is given.
    """
    if not cascades:
        raise ValueError("evaluate_profiles needs at least one cascade")
    judged = [q for q in qrels if q in queries]
    unknown = [q for q in qrels if q not in queries]
    if not judged:
        raise DatasetError(f"none of the {len(qrels)} judged query ids is in queries.jsonl (e.g. {unknown[:3]})")
    if limit:
        judged = judged[:limit]
    first = cascades[0]
    shared = all(c.retrievers is first.retrievers for c in cascades)
    got = [_Collect() for _ in cascades]
    skipped = 0
    t0 = time.perf_counter()
    size = min(10, first.config.limits.max_size)
    for n, qid in enumerate(judged, start=1):
        try:
            q = first.validate(Query(text=queries[qid], size=size, id=qid))
        except QueryError:
            skipped += 1  # e.g. an empty query text in the dataset: counted, not silently dropped
            if on_progress:
                on_progress(n, len(judged))
            continue
        try:
            retrieved = await first.retrieve(q) if shared else None
        except Exception as exc:  # the backend failed this query: a failure in every profile, not a skip
            for c in got:
                c.fail(qid, exc)
            retrieved = False
        if retrieved is not False:
            for casc, c in zip(cascades, got):
                try:
                    res = await casc.search(q, validated=True, budget_ms=budget_ms, retrieved=retrieved)
                except Exception as exc:
                    c.fail(qid, exc)
                    continue
                c.add(qid, res)
        if on_progress:
            on_progress(n, len(judged))
    evaluated = {q: qrels[q] for q in judged}
    seconds = time.perf_counter() - t0
    return [EvalReport(dataset=dataset, split=split, index=casc.config.index, config_version=casc.config.version,
                       queries=len(judged) - skipped, skipped_queries=skipped, stages=c.stages(evaluated),
                       seconds=seconds, plan=casc.plan(), profile=casc.profile, failed_queries=c.failed_queries,
                       errors=c.errors)
            for casc, c in zip(cascades, got)]


async def evaluate(cascade: Cascade, queries: dict[str, str], qrels: dict[str, dict[str, int]], *, dataset: str,
                   split: str, limit: int | None = None, budget_ms: float | None = None,
                   on_progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Every step of one cascade: :func:`evaluate_profiles` with one profile."""
    return (await evaluate_profiles([cascade], queries, qrels, dataset=dataset, split=split, limit=limit,
                                    budget_ms=budget_ms, on_progress=on_progress))[0]
