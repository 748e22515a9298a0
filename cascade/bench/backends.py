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
from pathlib import Path
from typing import Any, Callable

import ir_measures
import numpy as np
from ir_measures import nDCG
from rich.table import Table

from cascade.bench.common import BenchResult, head_lines, runtime_scores, top_texts
from cascade.controller import Cascade
from cascade.models.scorers import PairRuntime
from cascade.query import Query


@dataclass
class BackendResult:
    name: str
    pairs_per_s: float  # median over queries of (pairs scored / seconds for that query's call)
    p50_ms: float  # median milliseconds per query (all `depth` pairs)
    ndcg_10: float
    spearman: float  # mean per-query rank correlation with the reference backend's scores
    max_abs_diff: float  # largest score difference from the reference backend, over all pairs


@dataclass
class BackendBench(BenchResult):
    queries: int
    depth: int
    pairs_mean: float
    fusion_ndcg_10: float
    reference: str
    results: list[BackendResult] = field(default_factory=list)
    model: str = ""  # the model every backend runs (its config's name)
    dataset: str = ""
    split: str = ""
    notes: list[str] = field(default_factory=list)  # for the Markdown section: versions, threads, settings

    def by_name(self) -> dict[str, BackendResult]:
        return {r.name: r for r in self.results}

    def table(self) -> Table:
        ref = self.by_name()[self.reference]
        t = Table(title=f"{self.model} on {self.queries} {self.dataset} {self.split} queries, top {self.depth} "
                        "fused candidates")
        for c in ("backend", "pairs/s", f"× {self.reference}", "ms/query", "nDCG@10", "Δ nDCG@10", "Spearman"):
            t.add_column(c, justify="left" if c == "backend" else "right")
        for r in self.results:
            t.add_row(r.name, f"{r.pairs_per_s:.1f}", f"{r.pairs_per_s / ref.pairs_per_s:.2f}", f"{r.p50_ms:.0f}",
                      f"{r.ndcg_10:.4f}", f"{r.ndcg_10 - ref.ndcg_10:+.4f}", f"{r.spearman:.4f}")
        return t

    def section(self) -> tuple[str, str]:
        return f"ce-backends-{self.dataset}", f"Cross-encoder backends side by side on {self.dataset} {self.split}"

    def markdown(self, command: str, machine: str) -> str:
        ref = self.by_name()[self.reference]
        lines = [*head_lines(command, machine),
                 f"{self.queries} queries; each backend scores the same top {self.depth} fused candidates per query "
                 f"({self.pairs_mean:.1f} pairs on average), in rotating order; the ranking is those candidates in "
                 f"the backend's order followed by the rest in fusion order (fusion alone: nDCG@10 "
                 f"{self.fusion_ndcg_10:.4f}).", "",
                 f"| backend | pairs/s (median) | × {self.reference} | ms/query (p50) | nDCG@10 | Δ nDCG@10 | "
                 f"Spearman vs {self.reference} | max abs Δ score |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.results:
            lines.append(f"| {r.name} | {r.pairs_per_s:.1f} | {r.pairs_per_s / ref.pairs_per_s:.2f} | {r.p50_ms:.0f} | "
                         f"{r.ndcg_10:.4f} | {r.ndcg_10 - ref.ndcg_10:+.4f} | {r.spearman:.4f} | {r.max_abs_diff:.3g} |")
        lines += [""] + self.notes + [""]
        return "\n".join(lines)


def _ranking(ids: list[str], scores: np.ndarray | None) -> dict[str, float]:
    """The first len(scores) ids reordered by score (stable), the rest as they were: as the stage would return them."""
    n = 0 if scores is None else len(scores)
    head = list(range(n)) if scores is None else [int(i) for i in np.argsort(-scores, kind="stable")]
    order = [ids[i] for i in head] + ids[n:]
    return {d: float(len(order) - r) for r, d in enumerate(order)}


def compare_backends(cascade: Cascade, queries: dict[str, str], qrels: dict[str, dict[str, int]],
                     scorers: dict[str, PairRuntime], fields: list[str], depth: int = 20,
                     on_progress: Callable[[int, int], None] | None = None, *, model: str = "",
                     dataset: str = "", split: str = "", notes: list[str] | None = None) -> BackendBench:
    """Score each judged query's top ``depth`` fused candidates with every blocking runtime; the first is the
    reference. Documents a runtime cannot score get the stage's fallback, as they would in the cascade."""
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
        cands, docs = asyncio.run(top_texts(cascade, q, fields, depth))
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
            got[n] = runtime_scores(scorers[n], q.text, docs)
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
    bench = BackendBench(len(judged), depth, float(np.mean(sizes)), ndcg["fusion"], names[0], model=model,
                         dataset=dataset, split=split, notes=list(notes or []))
    for n in names:
        bench.results.append(BackendResult(
            n, statistics.median(rate[n]) if rate[n] else float("nan"),
            statistics.median(ms[n]) if ms[n] else float("nan"), ndcg[n],
            statistics.fmean(rho[n]) if rho[n] else float("nan"), diff[n]))
    return bench


def onnx_folder(ce: Any, settings: Any, onnx: Path | None = None) -> Path:
    """Where `cascade models export-onnx` put the stage model's export (default: CASCADE_TRAINED_DIR/MODEL-onnx)."""
    return onnx or settings.trained_dir / f"{Path(ce.model).name}-onnx"


def load_backends(ce: Any, settings: Any, onnx_dir: Path) -> dict[str, PairRuntime]:
    """The stage's model as torch fp32, torch bf16, ONNX fp32 and ONNX int8 runtimes (blocking, in this process)."""
    from cascade.models.onnx_ce import load_onnx_cross_encoder
    from cascade.models.torch_ce import load_cross_encoder

    common = dict(max_length=ce.max_length, batch_size=ce.batch_size)
    return {
        "torch fp32": load_cross_encoder([ce.model, *ce.fallback], settings, dtype="float32", **common),
        "torch bf16": load_cross_encoder([ce.model, *ce.fallback], settings, dtype="bfloat16", **common),
        "onnx fp32": load_onnx_cross_encoder([str(onnx_dir)], settings, onnx_file="model.onnx", **common),
        "onnx int8": load_onnx_cross_encoder([str(onnx_dir)], settings, onnx_file="model.int8.onnx", **common),
    }


def backend_notes(ce: Any, settings: Any, onnx_dir: Path) -> list[str]:
    """What the backends section says about the runs: model settings, ONNX Runtime version and threads."""
    import onnxruntime

    from cascade.models.onnx_ce import default_threads

    return [f"Model `{ce.model}`, max_length {ce.max_length}, batch_size {ce.batch_size}; every backend tokenizes "
            f"the same way (query first, document cut by tokens, batches sorted by length). ONNX Runtime "
            f"{onnxruntime.__version__} with {default_threads(settings)} intra-op threads; ONNX graphs from "
            f"`cascade models export-onnx` ({onnx_dir.name}).",
            "pairs/s is the median over queries of one call's pairs per second (tokenization included); "
            "nDCG@10 is on the judged queries of this split."]


@dataclass
class ModelComparison(BenchResult):
    """Cross-encoders (e.g. a fine-tuned one and its base) reordering the same fused candidates, each alone."""

    bench: BackendBench

    def table(self) -> Table:
        b = self.bench
        t = Table(title=f"{b.dataset} {b.split}: fused top {b.depth} reordered by each cross-encoder alone")
        for c in ("model", "nDCG@10", "vs fusion", "pairs/s"):
            t.add_column(c, justify="right")
        t.add_row("fusion (no cross-encoder)", f"{b.fusion_ndcg_10:.4f}", "", "")
        for r in b.results:
            t.add_row(r.name, f"{r.ndcg_10:.4f}", f"{r.ndcg_10 - b.fusion_ndcg_10:+.4f}", f"{r.pairs_per_s:.0f}")
        return t

    def section(self) -> tuple[str, str]:
        return f"ce-finetune-{self.bench.dataset}", f"Fine-tuned cross-encoder on {self.bench.dataset} {self.bench.split}"

    def markdown(self, command: str, machine: str) -> str:
        b = self.bench
        lines = [*head_lines(command, machine),
                 f"{b.queries} judged queries; each model reorders the same fused top {b.depth} (score alone, no "
                 f"combination), torch, `dtype: auto`, max_length 256.", "",
                 "| model | nDCG@10 | vs fusion | Spearman vs first |", "|---|---:|---:|---:|",
                 f"| fusion (no cross-encoder) | {b.fusion_ndcg_10:.4f} | | |"]
        lines += [f"| {r.name} | {r.ndcg_10:.4f} | {r.ndcg_10 - b.fusion_ndcg_10:+.4f} | {r.spearman:.3f} |"
                  for r in b.results]
        return "\n".join(lines + [""])


def compare_models(cascade: Cascade, queries: dict[str, str], qrels: dict[str, dict[str, int]],
                   models: dict[str, str], settings: Any, depth: int = 30, *, dataset: str = "", split: str = "",
                   on_progress: Callable[[int, int], None] | None = None) -> ModelComparison:
    """Each model (a path or name, torch, max_length 256) reorders the same fused top ``depth`` alone."""
    from cascade.models.torch_ce import load_cross_encoder

    scorers = {n: load_cross_encoder([m], settings, max_length=256, batch_size=32) for n, m in models.items()}
    return ModelComparison(compare_backends(cascade, queries, qrels, scorers, ["title", "text"], depth=depth,
                                            on_progress=on_progress, dataset=dataset, split=split))
