"""Every way to combine the cross-encoder with the stage before it: depth, normalization, weights.

The cross-encoder scores each query's top ``max(depths)`` once; every variant
is then an arithmetic re-ordering of the same scores, so the comparison is
exact and cheap. The candidates come from the cascade cut just before its
last cross-encoder stage (``Cascade.prefix``), exactly as that stage sees them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

import numpy as np
from rich.table import Table

from cascade.bench.common import BenchResult, fill_fields, head_lines, pair_stage, stage_scores
from cascade.bench.naive import as_run
from cascade.controller import Cascade
from cascade.query import Query
from cascade.stages.base import _normalize


@dataclass
class CombinationSweep(BenchResult):
    rows: list[dict]  # depth (0: the previous stage alone), normalize, w_ce, w_prev, ndcg@10
    previous: str  # the stage the cross-encoder is combined with
    queries: int
    dataset: str = ""
    split: str = ""

    def label(self, r: dict) -> str:
        return f"{r['w_ce']:g} : {r['w_prev']:g}" if r["depth"] else f"{self.previous} alone"

    def table(self) -> Table:
        prev = self.previous
        t = Table(title=f"cross-encoder combined with {prev}: nDCG@10 on {self.dataset} {self.split} "
                        f"({self.queries} queries)")
        for c in ("CE depth", "normalize", f"w cross_encoder : w {prev}", "nDCG@10"):
            t.add_column(c, justify="right")
        for r in self.rows:
            t.add_row(str(r["depth"]), r["normalize"], self.label(r), f"{r['ndcg@10']:.4f}")
        return t

    def section(self) -> tuple[str, str]:
        return (f"combine-{self.dataset}",
                f"Combining the cross-encoder with {self.previous} ({self.dataset} {self.split})")

    def markdown(self, command: str, machine: str) -> str:
        prev = self.previous
        lines = [*head_lines(command, machine),
                 "Each query's top candidates are scored by the cross-encoder once; every row re-orders the "
                 "same scores. Weight 1 : 0 is the cross-encoder alone. Measured on the evaluation split "
                 "itself (the model saw SciFact train, so train cannot pick weights fairly): read small "
                 "differences as noise.", "",
                 f"| CE depth | normalize | w cross_encoder : w {prev} | nDCG@10 |", "|---:|---|---|---:|"]
        lines += [f"| {r['depth']} | {r['normalize']} | {self.label(r)} | {r['ndcg@10']:.4f} |" for r in self.rows]
        return "\n".join(lines + [""])


def combination_sweep(cascade: Cascade, queries: dict[str, str], qrels: dict[str, dict[str, int]], *,
                      depths: tuple[int, ...] = (10, 20, 30),
                      weights: tuple[tuple[float, float], ...] = ((1, 0), (1, 1), (1, 2), (1, 3), (2, 1)),
                      norms: tuple[str, ...] = ("zscore", "minmax", "rank"), limit: int | None = None,
                      dataset: str = "", split: str = "",
                      on_progress: Callable[[int, int], None] | None = None) -> CombinationSweep:
    """nDCG@10 of the last cross-encoder stage's order for each depth, normalization and (CE, previous) weights.

    Weight (1, 0) is the cross-encoder alone.
    """
    import ir_measures
    from ir_measures import nDCG

    found = pair_stage(cascade, last=True)
    if found is None or found[0] == 0:
        raise ValueError("the cascade needs a stage before its cross-encoder stage to combine with")
    i, ce = found
    prev = cascade.stages[i - 1]
    head = cascade.prefix(i)
    qids = [q for q in qrels if q in queries][:limit]
    top_n = max(depths)

    async def one(qid: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        res = await head.search(head.validate(Query(text=queries[qid], id=qid)), validated=True)
        c = res.candidates
        top = c.head(top_n)
        await fill_fields(head, top, len(top))
        ce_scores = await stage_scores(ce, queries[qid], [top.text(j, ce.text_fields) for j in range(len(top))])
        return list(c.ids), np.asarray(c.stage_scores[prev.name], dtype=np.float64), ce_scores

    rows = {}
    for n, qid in enumerate(qids, start=1):
        rows[qid] = asyncio.run(one(qid))
        if on_progress:
            on_progress(n, len(qids))
    m = nDCG @ 10
    judged = {q: qrels[q] for q in rows}

    def ndcg(order_of) -> float:
        run = {}
        for q, (ids, prev_s, ce_s) in rows.items():
            head_order = order_of(prev_s, ce_s)
            rest = [j for j in range(len(ids)) if j not in set(head_order)]
            run[q] = as_run([ids[j] for j in list(head_order) + rest])
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
    return CombinationSweep(out, prev.name, len(qids), dataset, split)
