"""The LTR stage's cost (features + LightGBM per query) and LTR cross-validation by query."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.table import Table

from cascade.bench.common import BenchResult, head_lines, pct
from cascade.controller import Cascade
from cascade.query import Query


@dataclass
class LTRLatency(BenchResult):
    queries: int
    candidates_mean: float
    features_p50_ms: float
    features_p95_ms: float
    predict_p50_ms: float
    predict_p95_ms: float
    total_p50_ms: float
    total_p95_ms: float
    features: int = 0  # size of the feature set
    candidates: int | None = None  # what was asked of retrievers and fusion
    dataset: str = ""
    split: str = ""

    def parts(self) -> list[tuple[str, float, float]]:
        return [("features", self.features_p50_ms, self.features_p95_ms),
                ("LightGBM predict", self.predict_p50_ms, self.predict_p95_ms),
                ("total", self.total_p50_ms, self.total_p95_ms)]

    def table(self) -> Table:
        t = Table(title=f"features + LightGBM per query, {self.candidates_mean:.0f} candidates on average "
                        f"({self.queries} queries)")
        for c in ("part", "p50 ms", "p95 ms"):
            t.add_column(c, justify="right" if c != "part" else "left")
        for name, a, b in self.parts():
            t.add_row(name, f"{a:.2f}", f"{b:.2f}")
        return t

    def section(self) -> tuple[str, str]:
        return (f"ltr-latency-{self.dataset}",
                f"LTR stage cost: features + LightGBM for {self.candidates or round(self.candidates_mean)} candidates")

    def markdown(self, command: str, machine: str) -> str:
        return "\n".join([
            *head_lines(command, machine),
            f"{self.queries} {self.dataset} {self.split} queries, {self.candidates_mean:.1f} fused candidates each on "
            f"average; best of 3 runs per query, retrieval not timed, one thread.", "",
            "| part | p50 ms | p95 ms |", "|---|---:|---:|",
            f"| features ({self.features}) | {self.features_p50_ms:.2f} | {self.features_p95_ms:.2f} |",
            f"| LightGBM predict | {self.predict_p50_ms:.2f} | {self.predict_p95_ms:.2f} |",
            f"| **total** | **{self.total_p50_ms:.2f}** | **{self.total_p95_ms:.2f}** |", ""])


def open_for_latency(config: Any, settings: Any, candidates: int) -> Cascade:
    """The index's default profile with every retriever's k and the fusion's keep set to ``candidates``."""
    from cascade.builder import open_cascade

    retr = {n: r.model_copy(update={"k": candidates}) for n, r in config.retrievers.items()}
    casc = open_cascade(config.model_copy(update={"retrievers": retr}), settings)
    return casc.with_overrides({"fusion": {"keep": candidates}}, deeper=True)


def ltr_latency(cascade: Cascade, queries: list[str], on_progress: Callable[[int, int], None] | None = None,
                repeats: int = 3, dataset: str = "", split: str = "") -> LTRLatency:
    """Time feature extraction + the model's scoring on each query's fused candidates (retrieval not timed).

    The stage timed is the first that reads features (the LTR stage); its model scores the matrix.
    """
    ltr = next((s for s in cascade.stages if s.reads_features), None)
    if ltr is None or cascade.features is None or getattr(ltr, "model", None) is None:
        raise ValueError("the cascade has no stage that scores features (an ltr stage with a `features:` section)")
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
    return LTRLatency(len(queries), float(np.mean(sizes)), pct(feats, 50), pct(feats, 95), pct(preds, 50),
                      pct(preds, 95), pct(totals, 50), pct(totals, 95), features=len(cascade.features.names),
                      candidates=cascade.config.fusion.keep, dataset=dataset, split=split)


@dataclass
class CrossValidation(BenchResult):
    """Per fold: nDCG@10 of fusion's order and of the LTR model's order on the held-out queries."""

    rows: list[dict[str, float]]
    folds: int
    dataset: str = ""
    split: str = ""

    def means(self) -> tuple[float, float]:
        return (statistics.fmean(r["fusion_ndcg@10"] for r in self.rows),
                statistics.fmean(r["ltr_ndcg@10"] for r in self.rows))

    def table(self) -> Table:
        t = Table(title=f"{self.folds}-fold cross-validation by query ({self.dataset} {self.split})")
        for c in ("fold", "queries", "fusion nDCG@10", "ltr nDCG@10", "gain"):
            t.add_column(c, justify="right")
        for r in self.rows:
            t.add_row(str(r["fold"]), str(r["queries"]), f"{r['fusion_ndcg@10']:.4f}", f"{r['ltr_ndcg@10']:.4f}",
                      f"{r['ltr_ndcg@10'] - r['fusion_ndcg@10']:+.4f}")
        f_mean, l_mean = self.means()
        t.add_row("mean", str(sum(r["queries"] for r in self.rows)), f"{f_mean:.4f}", f"{l_mean:.4f}",
                  f"{l_mean - f_mean:+.4f}")
        return t

    def section(self) -> tuple[str, str]:
        return f"ltr-cv-{self.dataset}", f"LTR {self.folds}-fold cross-validation on {self.dataset} {self.split}"

    def markdown(self, command: str, machine: str) -> str:
        f_mean, l_mean = self.means()
        lines = [*head_lines(command, machine),
                 "Folds split by query; each fold trains on the other folds (20% of them held out for "
                 "early stopping) and ranks the held-out queries' logged candidates.", "",
                 "| fold | queries | fusion nDCG@10 | LTR nDCG@10 | gain |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['fold']} | {r['queries']} | {r['fusion_ndcg@10']:.4f} | {r['ltr_ndcg@10']:.4f} | "
                  f"{r['ltr_ndcg@10'] - r['fusion_ndcg@10']:+.4f} |" for r in self.rows]
        lines += [f"| **mean** | {sum(r['queries'] for r in self.rows)} | {f_mean:.4f} | {l_mean:.4f} | "
                  f"{l_mean - f_mean:+.4f} |", ""]
        return "\n".join(lines)


def cross_validation(logs: list[Path], qrels: dict[str, dict[str, int]], *, folds: int, seed: int = 13,
                     rounds: int = 150, early_stopping: int = 50, dataset: str = "",
                     split: str = "") -> CrossValidation:
    """K query folds of the feature logs, each trained on the others and scored on its own queries."""
    from features.training.ltr import cross_validate

    rows = cross_validate(logs, qrels, folds=folds, seed=seed, rounds=rounds, early_stopping=early_stopping)
    return CrossValidation(rows, folds, dataset, split)
