"""The pipeline everyone writes first (BM25 top 100, a cross-encoder on every pair) beside the cascade.

Both arms use the cascade's own cross-encoder stage (its scorer, as composed
at build time) and run one after the other on each query, alternating which
goes first, in one process, so their latencies share the same machine state.
Depth variants are views of the same cascade (``with_overrides(deeper=True)``):
no stage is mutated and no model is loaded twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from rich.table import Table

from cascade.bench.common import BenchResult, head_lines, pair_stage, stage_scores
from cascade.controller import Cascade
from cascade.query import Query


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


def as_run(ids: list[str]) -> dict[str, float]:
    """A ranking as an ir_measures run (an empty ranking as a placeholder that matches nothing)."""
    return {d: float(len(ids) - i) for i, d in enumerate(ids)} or {"__none__": 0.0}


@dataclass
class NaiveVsCascade(BenchResult):
    arms: dict[str, Arm]
    qrels: dict[str, dict[str, int]]
    dataset: str = ""
    split: str = ""
    model: str | None = None  # the cross-encoder both arms use, as its stage describes it
    dtype: str | None = None
    _summary: dict[str, dict[str, float]] | None = field(default=None, repr=False)

    @property
    def queries(self) -> int:
        return len(self.arms["naive"].ms)

    def summary(self) -> dict[str, dict[str, float]]:
        if self._summary is None:
            self._summary = {k: a.summary(self.qrels) for k, a in self.arms.items()}
        return self._summary

    def ratios(self) -> dict[str, float | None]:
        nv, cs = self.summary()["naive"], self.summary()["cascade"]
        return {"ndcg@10": round(cs["ndcg@10"] / nv["ndcg@10"], 4) if nv["ndcg@10"] else None,
                "ce_pairs": round(cs["ce_pairs_per_query"] / nv["ce_pairs_per_query"], 3),
                "p50_speedup": round(nv["p50_ms"] / cs["p50_ms"], 2),
                "p95_speedup": round(nv["p95_ms"] / cs["p95_ms"], 2)}

    def as_json(self) -> dict:
        summ = self.summary()
        return {"naive": summ["naive"], "cascade": summ["cascade"], "ratios": self.ratios(),
                "variants": {k: v for k, v in summ.items() if k.startswith("cascade@")}}

    def table(self) -> Table:
        t = Table(title=f"naive vs cascade, {self.dataset} {self.split}, {self.queries} queries")
        for c in ("pipeline", "nDCG@10", "CE pairs/q", "p50 ms", "p95 ms"):
            t.add_column(c, justify="left" if c == "pipeline" else "right")
        for k, v in self.summary().items():
            t.add_row(k, f"{v['ndcg@10']:.4f}", f"{v['ce_pairs_per_query']:.0f}", f"{v['p50_ms']:.0f}",
                      f"{v['p95_ms']:.0f}")
        return t

    def verdict(self) -> str:
        r = self.ratios()
        return (f"cascade / naive: nDCG@10 {r['ndcg@10'] or 0:.3f}x, pairs {r['ce_pairs']:.2f}x, "
                f"p95 {r['p95_speedup']:.1f}x faster")

    def section(self) -> tuple[str, str]:
        return f"naive-vs-cascade-{self.dataset}", "Naive BM25 + cross-encoder against the cascade"

    def markdown(self, command: str, machine: str, image: str | None = None) -> str:
        r = self.ratios()
        lines = [*head_lines(command, machine),
                 f"{self.queries} {self.dataset} {self.split} queries; each query runs every pipeline in one "
                 f"process, alternating which goes first; the same cross-encoder ({self.model}, {self.dtype}) in all.",
                 "", "| pipeline | nDCG@10 | CE pairs/query | p50 ms | p95 ms |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['ndcg@10']:.4f} | {v['ce_pairs_per_query']:.0f} | {v['p50_ms']:.0f} | {v['p95_ms']:.0f} |"
                  for k, v in self.summary().items()]
        lines += ["", f"Cascade / naive: nDCG@10 **{r['ndcg@10'] or 0:.3f}x**, CE pairs **{r['ce_pairs']:.2f}x**, "
                  f"p50 **{r['p50_speedup']:.1f}x** and p95 **{r['p95_speedup']:.1f}x** faster.", ""]
        if image:
            lines += [f"![quality against latency]({image})", ""]
        return "\n".join(lines)


def naive_vs_cascade(cascade: Cascade, queries: dict[str, str], qrels: dict[str, dict[str, int]], *,
                     naive_depth: int = 100, depths: tuple[int, ...] = (), limit: int | None = None,
                     dataset: str = "", split: str = "",
                     on_progress: Callable[[int, int], None] | None = None) -> NaiveVsCascade:
    """Both pipelines on each judged query; ``depths`` adds cascade variants whose first cross-encoder stage
    re-scores that many candidates (deeper than the config allows, too), for the quality/latency curve."""
    found = pair_stage(cascade)
    if found is None:
        raise ValueError("the cascade has no cross-encoder stage (a stage scoring pairs) to compare")
    _, ce = found
    bm25 = next((r for n, r in cascade.retrievers.items() if cascade.config.retrievers[n].type == "bm25"), None)
    if bm25 is None:
        raise ValueError("the cascade has no bm25 retriever for the naive pipeline")
    qids = [q for q in qrels if q in queries][:limit]
    depths = tuple(d for d in dict.fromkeys(depths) if d != ce.rerank)  # the default arm already runs its own depth
    arms = {k: Arm(k, {}, [], []) for k in ("naive", "cascade", *(f"cascade@{d}" for d in depths))}
    variants = {"cascade": cascade,
                **{f"cascade@{d}": cascade.with_overrides({ce.name: {"rerank": d}}, deeper=True) for d in depths}}

    async def naive(q: Query) -> tuple[list[str], int]:
        hits = await bm25.retrieve(q, naive_depth)
        docs = await cascade.documents.fetch([h.id for h in hits])
        texts = [" ".join(str(d.get(f)) for f in ce.text_fields if d and d.get(f)) for d in docs]
        scores = await stage_scores(ce, q.text, texts)
        order = np.argsort(-scores, kind="stable")
        return [hits[i].id for i in order][:10], len(hits)

    async def ranked(q: Query, casc: Cascade) -> tuple[list[str], int]:
        res = await casc.search(q, validated=True)
        return res.candidates.ids[:10], res.cost().get("pairs", 0)

    for n, qid in enumerate(qids, start=1):
        q = cascade.validate(Query(text=queries[qid], id=qid))
        jobs = [("naive", lambda: naive(q))] + [(k, (lambda c=c: ranked(q, c))) for k, c in variants.items()]
        if n % 2 == 0:
            jobs.reverse()
        for name, job in jobs:
            t = time.perf_counter()
            ids, pairs = asyncio.run(job())
            arms[name].ms.append((time.perf_counter() - t) * 1e3)
            arms[name].run[qid] = as_run(ids)
            arms[name].pairs.append(pairs)
        if on_progress:
            on_progress(n, len(qids))
    d = ce.describe()
    return NaiveVsCascade(arms, qrels, dataset, split, d.get("model"), d.get("dtype"))
