"""A small discrete-event simulation of queries flowing through pools of servers (first come, first served).

Each query arrives at its time and visits stations in order (cascade
replicas, the OpenSearch cluster, a GPU rerank pool, a replica again); a
station is a pool of identical servers with one FIFO queue, and a visit holds
one server for the query's service time there. The event loop is the
textbook one (a heap of completion times); written here because it is forty
lines and its arithmetic is tested against queueing theory (M/M/1, M/M/c with
Erlang C, M/D/1 with Pollaczek-Khinchine) in tests/test_planning.py.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass
class Station:
    name: str
    servers: int


@dataclass
class Visit:
    station: int  # index into the stations
    service_ms: float


@dataclass
class SimResult:
    latency_ms: np.ndarray  # per query (after the warm-up ones)
    wait_ms: dict[str, float]  # mean queueing delay per station
    utilization: dict[str, float]  # busy share of each station's servers over the run

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latency_ms, q)) if len(self.latency_ms) else float("nan")

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p95(self) -> float:
        return self.pct(95)

    @property
    def mean(self) -> float:
        return float(self.latency_ms.mean()) if len(self.latency_ms) else float("nan")


def simulate(arrivals_ms: Sequence[float], routes: Sequence[Sequence[Visit]], stations: Sequence[Station], *,
             warmup: int = 0) -> SimResult:
    """Run queries arriving at ``arrivals_ms`` (sorted) through their ``routes``; latency = leave - arrive.

    The heap holds service completions (time, creation order, query, step); arrivals are read in order beside
    it. A completion frees its server for the first query queued there, and sends its query to its next step;
    equal times keep creation order, so the queues stay first come, first served.
    """
    n = len(arrivals_ms)
    if len(routes) != n:
        raise ValueError("one route per arrival")
    arr = [float(t) for t in arrivals_ms]
    if any(b < a for a, b in zip(arr, arr[1:])):
        raise ValueError("arrivals must be sorted")
    plan = [[(v.station, float(v.service_ms)) for v in r] for r in routes]
    free = [s.servers for s in stations]
    if min(free, default=1) < 1:
        raise ValueError("every station needs at least one server")
    queues: list[deque] = [deque() for _ in stations]
    busy = [0.0] * len(stations)
    wait_sum = [0.0] * len(stations)
    wait_n = [0] * len(stations)
    done = [math.nan] * n
    heap: list[tuple[float, int, int, int]] = []  # (time, order, query, step) of service completions
    order = 0
    nxt = 0  # next arrival to read

    def reach(t: float, q: int, step: int) -> None:
        nonlocal order
        if step >= len(plan[q]):
            done[q] = t
            return
        s_, svc = plan[q][step]
        if free[s_] > 0:
            free[s_] -= 1
            wait_n[s_] += 1
            busy[s_] += svc
            heapq.heappush(heap, (t + svc, order, q, step))
            order += 1
        else:
            queues[s_].append((q, step, t))

    while nxt < n or heap:
        if nxt < n and (not heap or arr[nxt] <= heap[0][0]):
            reach(arr[nxt], nxt, 0)
            nxt += 1
            continue
        t, _, q, step = heapq.heappop(heap)
        s_ = plan[q][step][0]
        if queues[s_]:  # the server goes straight to the next in line
            nq, nstep, arrived = queues[s_].popleft()
            svc = plan[nq][nstep][1]
            wait_sum[s_] += t - arrived
            wait_n[s_] += 1
            busy[s_] += svc
            heapq.heappush(heap, (t + svc, order, nq, nstep))
            order += 1
        else:
            free[s_] += 1
        reach(t, q, step + 1)
    a = np.asarray(arr, dtype=np.float64)
    d = np.asarray(done, dtype=np.float64)
    lat = (d - a)[warmup:]
    span = (float(np.nanmax(d)) - a[0]) if n else 0.0
    return SimResult(lat, {st.name: wait_sum[i] / wait_n[i] if wait_n[i] else 0.0 for i, st in enumerate(stations)},
                     {st.name: (busy[i] / (span * st.servers) if span > 0 else 0.0) for i, st in enumerate(stations)})


def poisson_arrivals(rate_per_s: float, n: int, seed: int = 13) -> np.ndarray:
    """``n`` arrival times (ms) of a Poisson process at ``rate_per_s``."""
    gaps = np.random.default_rng(seed).exponential(1000.0 / rate_per_s, n)
    return np.cumsum(gaps)


# -------------------------------------------------------------------- closed forms the simulator is checked against


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with offered load ``a`` = lambda / mu (a < c)."""
    s = sum(a**k / math.factorial(k) for k in range(c))
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (s + top)


def mmc_mean_wait_ms(rate_per_s: float, service_ms: float, c: int) -> float:
    """Mean queueing delay in an M/M/c queue (Erlang C)."""
    mu = 1000.0 / service_ms
    a = rate_per_s / mu
    return erlang_c(c, a) / (c * mu - rate_per_s) * 1000.0


def md1_mean_wait_ms(rate_per_s: float, service_ms: float) -> float:
    """Mean queueing delay in an M/D/1 queue (Pollaczek-Khinchine): rho * S / (2 (1 - rho))."""
    rho = rate_per_s * service_ms / 1000.0
    return rho * service_ms / (2 * (1 - rho))


def route_from(sampler: Callable[[np.random.Generator], list[Visit]], n: int, seed: int = 13) -> list[list[Visit]]:
    rng = np.random.default_rng(seed + 1)
    return [sampler(rng) for _ in range(n)]


__all__ = ["SimResult", "Station", "Visit", "erlang_c", "md1_mean_wait_ms", "mmc_mean_wait_ms", "poisson_arrivals",
           "route_from", "simulate"]
