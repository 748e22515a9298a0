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
from dataclasses import dataclass, field

import numpy as np

from cascade.controller import Cascade
from cascade.query import Query
from connectors.microbatch import BatcherStats, MicroBatcher

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
        cands, _ = asyncio.run(cascade.candidates(q))
        docs = [cands.text(i, fields) for i in range(min(depth, len(cands)))]
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


def compare_microbatch(scorer, requests: list[Request], clients: int = 8, round_size: int | None = None,
                       max_wait_ms: float = 2.0, max_pairs: int = 256,
                       on_progress: Callable[[int, int], None] | None = None) -> MicroBatchBench:
    """Per-request ``asyncio.to_thread(scorer.score)`` against a :class:`MicroBatcher`, round by round."""
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
            diff = max(diff, max(float(np.abs(a - b).max()) for a, b in zip(got[PER_REQUEST], got[BATCHED])))
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
