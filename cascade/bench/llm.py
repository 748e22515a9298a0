"""The LLM stage on a real collection (`cascade bench-llm`): nDCG@10 before and after it, its latency, calls
and tokens, for the pointwise and the listwise method side by side on the same candidates.

The index's own cascade (its default profile) is the stage before the LLM;
two profiles add the LLM stage on its top ``rerank``: pointwise (P(yes) from
log-probabilities, combined with the previous stage's score by the stage
contract's ``combine``) and listwise (a permutation of a sliding window).
Both are bounded by ``max_move``. All profiles are evaluated in one pass
(``evaluate_profiles``: candidates retrieved once per query).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from rich.table import Table

from cascade.bench.common import BenchResult, head_lines
from cascade.config import IndexConfig, parse_config


@dataclass
class LLMBench(BenchResult):
    dataset: str
    split: str
    queries: int
    url: str
    model: str
    rerank: int
    max_move: int
    previous: str  # the step the LLM stage follows
    max_doc_chars: int = 1200
    rows: list[dict] = field(default_factory=list)  # profile, method, before, after, p50_ms, p95_ms, calls, tokens
    seconds: float = 0.0
    load: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # load average at start and end (1, 5, 15 min)

    def table(self) -> Table:
        t = Table(title=f"LLM stage on {self.dataset} {self.split} ({self.queries} queries, top {self.rerank} "
                        f"of {self.previous}, max_move {self.max_move}): nDCG@10")
        for c in ("method", "before", "after", "Δ", "p50 s", "calls/q", "tokens/q", "failed"):
            t.add_column(c, justify="right" if c != "method" else "left")
        for r in self.rows:
            t.add_row(r["method"], f"{r['before']:.4f}", f"{r['after']:.4f}", f"{r['after'] - r['before']:+.4f}",
                      f"{r['p50_ms'] / 1e3:.2f}", f"{r['calls']:.1f}", f"{r['tokens']:.0f}", str(r["failed"]))
        return t

    def section(self) -> tuple[str, str]:
        return f"llm-{self.dataset}-{self.split}", f"LLM stage on {self.dataset} {self.split}"

    def markdown(self, command: str, machine: str) -> str:
        lines = [
            *head_lines(command, machine),
            f"Server: {self.url} (OpenAI-compatible; `make bench-llm` assembles the model, starts llama-cpp-python's "
            f"server and runs this), model `{self.model}`; the stage runs on the top {self.rerank} "
            f"of the index's default cascade (its last step: `{self.previous}`), no document moving more than "
            f"{self.max_move} places; documents cut to {self.max_doc_chars} characters. {self.queries} judged "
            f"queries, {self.seconds:.0f} s in all.  ",
            "Pointwise: P(yes) from the first token's top log-probabilities, combined (zscore, weights 1 : 1) with "
            "the previous step's score; listwise: a permutation of the window (JSON-constrained), read strictly.",
            "",
            f"| method | nDCG@10 before ({self.previous}) | after | Δ | LLM step p50 s | p95 s (cumulative p95 minus "
            "the previous step's) | calls / query | "
            "tokens / query | queries it failed on |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            lines.append(f"| {r['method']} | {r['before']:.4f} | {r['after']:.4f} | {r['after'] - r['before']:+.4f} | "
                         f"{r['p50_ms'] / 1e3:.2f} | {r['p95_ms'] / 1e3:.2f} | {r['calls']:.1f} | {r['tokens']:.0f} | "
                         f"{r['failed']} |")
        lines += ["", "Latency is the LLM step alone, per query, on this machine's CPU (the server and the cascade "
                      "share its 2 cores); a failed query kept the previous order (flagged)."]
        if self.load:
            fmt = lambda la: ", ".join(f"{x:.1f}" for x in la)  # noqa: E731
            lines.append(f"Load average (1, 5, 15 min) at the start {fmt(self.load[0])}, at the end {fmt(self.load[1])}"
                         + (": other jobs shared the 2 cores, so the latencies are an upper bound." if
                            max(self.load[0][1], self.load[1][1]) > 2.5 else "."))
        return "\n".join(lines) + "\n"


def with_llm_profiles(cfg: IndexConfig, *, url: str, model: str, rerank: int, max_move: int, window: int,
                      stride: int, constrain: str, timeout_s: float, max_doc_chars: int = 1200
                      ) -> tuple[IndexConfig, str]:
    """``cfg`` plus profiles ``llm-pointwise`` and ``llm-listwise``: the default profile's stages, then the LLM."""
    data = cfg.model_dump(mode="json")
    stages = list(data.get("stages") or [])
    previous = stages[-1].get("name") or stages[-1]["type"] if stages else "fusion"
    remote = {"url": url, "timeout_s": timeout_s, "retries": 1, "max_concurrency": 1}
    common = {"type": "llm", "model": model, "remote": remote, "rerank": rerank, "max_move": max_move,
              "fields": [f for f in ("title", "text") if f in cfg.fields], "max_doc_chars": max_doc_chars}
    data["profiles"] = {
        **(data.get("profiles") or {}),
        "llm-pointwise": {"inherit": "default", "stages": stages + [{**common, "method": "pointwise",
                                               "combine": {"normalize": "zscore",
                                                           "weights": {"llm": 1.0, previous: 1.0}}}]},
        "llm-listwise": {"inherit": "default", "stages": stages + [{**common, "method": "listwise", "window": window,
                                                                   "stride": stride,
                                              "constrain": constrain}]},
    }
    return parse_config(data, f"{cfg.index}.yaml"), previous


def run(cfg: IndexConfig, settings, queries: dict[str, str], qrels: dict[str, dict[str, int]], *, dataset: str,
        split: str, url: str, model: str, rerank: int = 5, max_move: int = 5, window: int = 5, stride: int = 3,
        constrain: str = "json_object", timeout_s: float = 120.0, max_doc_chars: int = 1200, limit: int | None = None,
        methods: tuple[str, ...] = ("pointwise", "listwise"),
        on_progress: Callable[[int, int], None] | None = None) -> LLMBench:
    from cascade.builder import open_index
    from cascade.evaluation import evaluate_profiles

    full, previous = with_llm_profiles(cfg, url=url, model=model, rerank=rerank, max_move=max_move, window=window,
                                       stride=stride, constrain=constrain, timeout_s=timeout_s,
                                       max_doc_chars=max_doc_chars)
    unknown = [m for m in methods if m not in ("pointwise", "listwise")]
    if unknown or not methods:
        raise ValueError(f"--methods: pointwise and/or listwise (got {', '.join(methods) or 'nothing'})")
    names = [f"llm-{m}" for m in methods]
    opened = open_index(full, settings, profiles=names)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    try:
        cascades = [opened.cascade(n) for n in names]
        reports = asyncio.run(evaluate_profiles(cascades, queries, qrels, dataset=dataset, split=split, limit=limit,
                                                on_progress=on_progress))
    finally:
        asyncio.run(opened.close())
    res = LLMBench(dataset, split, reports[0].queries, url, model, rerank, max_move, previous, max_doc_chars,
                   seconds=time.perf_counter() - t0, load=(load0, os.getloadavg()))
    for name, rep, casc in zip(names, reports, cascades):
        steps = {s.name: s for s in rep.stages}
        llm, before = steps["llm"], steps[previous]
        calls, tokens = casc.stages[-1].usage()
        res.rows.append({"profile": name, "method": name.split("-", 1)[1], "before": before.ndcg_10,
                         "after": llm.ndcg_10, "p50_ms": llm.step_p50_ms,
                         "p95_ms": _step_p95(rep, "llm"), "calls": calls / max(rep.queries, 1),
                         "tokens": tokens / max(rep.queries, 1), "failed": llm.failed})
    return res


def _step_p95(report, name: str) -> float:
    """The step's own p95 when the report has it; else its cumulative p95 minus the previous step's."""
    steps = [s for s in report.stages]
    i = next(k for k, s in enumerate(steps) if s.name == name)
    return max(0.0, steps[i].p95_ms - (steps[i - 1].p95_ms if i else 0.0))
