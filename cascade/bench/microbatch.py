"""Micro-batching under load: concurrent clients scoring through per-request threads or through the batcher.

N clients (closed loop: each sends its next query as soon as the last one is
answered) score SciFact queries with their top fused candidates, first one way
then the other, with the same scorer and the same queries. Queries are cut into
rounds; every round runs through both modes back to back, in alternating
order, so that load from other jobs on a shared machine hits both alike. The
ratio reported is the median over rounds of (micro-batched pairs/s) /
(per-request pairs/s) of the same round.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any
from dataclasses import dataclass, field

import numpy as np
from rich.table import Table

from cascade.bench.common import BenchResult, head_lines, top_texts
from cascade.controller import Cascade
from cascade.models.microbatch import BatcherStats, MicroBatcher
from cascade.query import Query

PER_REQUEST, BATCHED = "per request", "micro-batched"
Request = tuple[str, list[str]]


@dataclass
class ModeResult:
    name: str
    pairs_per_s: float  # median over rounds of (pairs in the round / the round's wall time)
    queries_per_s: float  # the same, in queries
    p50_ms: float  # per query, from the client's call to its answer, over all rounds
    p95_ms: float
    cpu_ms_per_pair: float  # median over rounds of this process's CPU time (all threads) per pair
    rounds_pairs_per_s: list[float] = field(default_factory=list)


@dataclass
class MicroBatchBench:
    clients: int
    threads: int | None  # torch intra-op threads during the run (None: not torch)
    queries: int
    rounds: int
    pairs_mean: float
    max_wait_ms: float
    max_pairs: int
    modes: dict[str, ModeResult]
    ratio: float  # median over rounds of batched / per-request pairs/s
    ratios: list[float]
    requests_per_pass: float
    max_abs_diff: float  # largest score difference between the two modes, over all pairs


def collect_requests(cascade: Cascade, texts: list[str], fields: list[str], depth: int = 20) -> list[Request]:
    """Each query's top ``depth`` fused candidate texts (retrieval happens here, outside any timing)."""
    out = []
    for text in texts:
        q = cascade.validate(Query(text=text))
        _, docs = asyncio.run(top_texts(cascade, q, fields, depth))
        if docs:
            out.append((q.text, docs))
    return out


async def _drive(requests: list[Request], clients: int,
                 score: Callable[[str, list[str]], Awaitable[np.ndarray]]) -> tuple[float, list[float], list]:
    """Closed-loop clients over a shared list: (wall seconds, per-query ms, scores in request order)."""
    todo = iter(range(len(requests)))
    out: list = [None] * len(requests)
    lat: list[float] = []

    async def client() -> None:
        for i in todo:
            t0 = time.perf_counter()
            out[i] = await score(*requests[i])
            lat.append((time.perf_counter() - t0) * 1e3)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - t0, lat, out


def compare_microbatch(scorer: Any, requests: list[Request], clients: int = 8, round_size: int | None = None,
                       max_wait_ms: float = 2.0, max_pairs: int = 256,
                       on_progress: Callable[[int, int], None] | None = None) -> MicroBatchBench:
    """Per-request ``asyncio.to_thread(scorer.score)`` against a :class:`MicroBatcher`, round by round.

    ``scorer``: a blocking local runtime (``CrossEncoderConfig.load_runtime``) with ``score`` and ``score_many``.
    """
    if not requests:
        raise ValueError("no requests to score")
    round_size = round_size or clients * 3
    chunks = [requests[i: i + round_size] for i in range(0, len(requests), round_size)]
    batcher = MicroBatcher(scorer, max_wait_ms=max_wait_ms, max_pairs=max_pairs)
    modes: dict[str, Callable[[str, list[str]], Awaitable[np.ndarray]]] = {
        PER_REQUEST: lambda q, d: asyncio.to_thread(scorer.score, q, d),
        BATCHED: batcher.score,
    }
    rate: dict[str, list[float]] = {m: [] for m in modes}
    qps: dict[str, list[float]] = {m: [] for m in modes}
    lat: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    diff = 0.0

    async def run() -> None:
        nonlocal diff
        warm = requests[: max(clients, 2)]  # lazy initialisation (threads, allocator) is not what a query costs
        for fn in modes.values():
            await _drive(warm, clients, fn)
        batcher.stats = BatcherStats()
        for k, chunk in enumerate(chunks):
            pairs = sum(len(d) for _, d in chunk)
            got = {}
            for m in (list(modes) if k % 2 == 0 else list(modes)[::-1]):
                c0 = time.process_time()
                wall, ms, got[m] = await _drive(chunk, clients, modes[m])
                cpu[m].append((time.process_time() - c0) * 1e3 / pairs)
                rate[m].append(pairs / wall)
                qps[m].append(len(chunk) / wall)
                lat[m] += ms
            diff = max(diff, max(_max_diff(a, b) for a, b in zip(got[PER_REQUEST], got[BATCHED])))
            if on_progress:
                on_progress(k + 1, len(chunks))

    try:
        asyncio.run(run())
    finally:
        batcher.close()
    results = {m: ModeResult(m, statistics.median(rate[m]), statistics.median(qps[m]),
                             float(np.percentile(lat[m], 50)), float(np.percentile(lat[m], 95)),
                             statistics.median(cpu[m]), rate[m])
               for m in modes}
    ratios = [b / a for a, b in zip(rate[PER_REQUEST], rate[BATCHED])]
    return MicroBatchBench(clients, _torch_threads(scorer), len(requests), len(chunks), float(np.mean([len(d) for _, d in requests])),
                           max_wait_ms, max_pairs, results, statistics.median(ratios), ratios,
                           batcher.stats.requests_per_pass, diff)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference over the pairs both modes could score (NaN: a document neither could)."""
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    d = d[np.isfinite(d)]
    return float(d.max()) if len(d) else 0.0


def _torch_threads(scorer) -> int | None:
    if not hasattr(scorer, "net"):  # ONNX Runtime: threads are fixed when its session opens
        return None
    import torch

    return torch.get_num_threads()


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"
    except OSError:  # pragma: no cover - not on every platform
        return "load average unknown"


@dataclass
class MicroBatchRun(BenchResult):
    """Every (torch threads, clients) combination of one run, with what the report says about it."""

    benches: list[MicroBatchBench]
    model: str
    dtype: str
    backend: str  # torch or onnx
    depth: int
    max_length: int
    batch_size: int
    load_before: str
    load_after: str
    dataset: str = ""
    split: str = ""

    def table(self) -> Table:
        queries = self.benches[0].queries if self.benches else 0
        t = Table(title=f"{self.model} ({self.dtype}) on {queries} {self.dataset} {self.split} queries, "
                        f"top {self.depth} fused candidates")
        for c in ("threads", "clients", "mode", "pairs/s", "queries/s", "p50 ms", "p95 ms", "CPU ms/pair",
                  "× per request", "requests/pass"):
            t.add_column(c, justify="left" if c == "mode" else "right")
        for b in self.benches:
            for name, r in b.modes.items():
                on = name == BATCHED
                t.add_row(str(b.threads or "-"), str(b.clients), name, f"{r.pairs_per_s:.1f}", f"{r.queries_per_s:.2f}",
                          f"{r.p50_ms:.0f}", f"{r.p95_ms:.0f}", f"{r.cpu_ms_per_pair:.0f}",
                          f"{b.ratio if on else 1.0:.2f}", f"{b.requests_per_pass if on else 1.0:.1f}")
        return t

    def load_line(self) -> str:
        return f"{self.load_before} before, {self.load_after} after"

    def section(self) -> tuple[str, str]:
        return (f"microbatch-{self.dataset}-{self.backend}",
                f"Micro-batching concurrent cross-encoder requests ({self.backend}) on {self.dataset} {self.split}")

    def markdown(self, command: str, machine: str) -> str:
        notes = [(f"Model `{self.model}` ({self.backend}, {self.dtype}), max_length {self.max_length}, "
                  f"batch_size {self.batch_size}. Per request: each query's pairs scored by `asyncio.to_thread("
                  f"runtime.score)` (the stage without `micro_batch`; the default executor runs up to "
                  f"{min(32, (os.cpu_count() or 1) + 4)} at once). Micro-batched: the same runtime behind "
                  f"`cascade.models.microbatch.MicroBatcher` (one model thread, pairs length-sorted across requests)."),
                 f"Machine load: {self.load_before} before the run, {self.load_after} after (other jobs share this "
                 f"machine)."]
        return markdown(self.benches, head_lines(command, machine), notes)


def run_microbatch(runtime: Any, requests: list[Request], *, clients: list[int], threads: list[int] | None = None,
                   max_wait_ms: float = 2.0, max_pairs: int = 256, depth: int = 20, backend: str = "torch",
                   max_length: int = 0, batch_size: int = 0, dataset: str = "", split: str = "",
                   on_progress: Callable[[str, int, int], None] | None = None) -> MicroBatchRun:
    """:func:`compare_microbatch` for each torch thread count (``threads``; None: as configured) and client count.

    ``on_progress(label, done, total)`` names the combination running. Torch's thread count is restored after.
    """
    if threads:
        import torch

        configured = torch.get_num_threads()
    load_before = load_average()
    benches = []
    try:
        for t in threads or [None]:
            if t is not None:
                torch.set_num_threads(t)
            for n in clients:
                label = f"{n} clients{f', {t} threads' if t else ''}, {len(requests)} queries, both modes"
                progress = (lambda d, tot, _l=label: on_progress(_l, d, tot)) if on_progress else None
                benches.append(compare_microbatch(runtime, requests, clients=n, max_wait_ms=max_wait_ms,
                                                  max_pairs=max_pairs, on_progress=progress))
    finally:
        if threads:
            torch.set_num_threads(configured)  # the report's machine line shows the configured count
    return MicroBatchRun(benches, runtime.name, str(getattr(runtime, "dtype", "?")), backend, depth, max_length,
                         batch_size, load_before, load_average(), dataset, split)


def markdown(benches: list[MicroBatchBench], head: list[str], notes: list[str]) -> str:
    """``head``: the command and machine lines every benchmark section starts with."""
    b0 = benches[0]
    lines = [*head,
             (f"{b0.queries} queries, each with its top fused candidates ({b0.pairs_mean:.1f} pairs on average); "
              f"closed-loop clients; the queries are cut into rounds of 3 per client and every round runs through "
              f"both modes back to back (alternating which goes first). Micro-batcher: max_wait_ms "
              f"{b0.max_wait_ms:g}, max_pairs {b0.max_pairs}."), "",
             ("| torch threads | clients | mode | pairs/s (median of rounds) | queries/s | p50 ms/query | "
              "p95 ms/query | CPU ms/pair | × per request (median of rounds) | requests per model pass |"),
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for b in benches:
        for name, r in b.modes.items():
            batched = name == BATCHED
            lines.append(f"| {b.threads or '-'} | {b.clients} | {name} | {r.pairs_per_s:.1f} | {r.queries_per_s:.2f} | "
                         f"{r.p50_ms:.0f} | {r.p95_ms:.0f} | {r.cpu_ms_per_pair:.0f} | "
                         f"{b.ratio if batched else 1.0:.2f} | {b.requests_per_pass if batched else 1.0:.1f} |")
    lines += ["", "Per-round ratios (micro-batched ÷ per request): "
              + "; ".join(f"{b.threads or '-'} threads, {b.clients} clients: "
                          + ", ".join(f"{x:.2f}" for x in b.ratios) for b in benches)
              + f". Largest score difference between the modes: "
              f"{max(b.max_abs_diff for b in benches):.3g} (batches pad differently).", ""]
    lines += notes + [""]
    return "\n".join(lines)
