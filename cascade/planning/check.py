"""Checking the simulator against this machine: the real cascade under Poisson arrivals against its prediction.

One replica here is this 2-core machine running one search at a time (a
FIFO slot, as the planner models a replica). First every query is run once
alone to measure its service time; then, for each arrival rate, queries
arrive as a Poisson process and wait for the slot. The simulator is given
the same arrival times and the service times measured alone, and predicts
each query's latency; the measured latencies are compared with it. A replay
(the same arrivals with the service times each query actually took in the
run) separates the queueing arithmetic from the drift of service times
under the machine's other load.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from cascade.controller import Cascade
from cascade.planning.simulate import Station, Visit, poisson_arrivals, simulate
from cascade.query import Query


@dataclass
class RateCheck:
    rate: float
    queries: int
    utilization: float  # predicted: rate x mean service time alone
    measured_p50: float
    measured_p95: float
    simulated_p50: float  # the simulator given the arrivals and the service times measured alone (a prediction)
    simulated_p95: float
    service_during_ms: float  # mean service time measured during the loaded run (drift from the solo pass)
    replay_p50: float = 0.0  # the simulator given the arrivals and the service times of the run itself
    replay_p95: float = 0.0

    def as_json(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class Check:
    dataset: str
    split: str
    queries: int
    service_alone_ms: list[float]
    rates: list[RateCheck] = field(default_factory=list)

    def as_json(self) -> dict:
        s = np.asarray(self.service_alone_ms)
        return {"dataset": self.dataset, "split": self.split, "query_pool": self.queries,
                "service_alone_ms": {"mean": round(float(s.mean()), 2), "p50": round(float(np.median(s)), 2),
                                     "p95": round(float(np.percentile(s, 95)), 2)},
                "rates": [r.as_json() for r in self.rates]}


async def run_check(casc: Cascade, texts: Sequence[str], rates: Sequence[float], per_rate: int, *, dataset: str,
                    split: str, seed: int = 13,
                    on_progress: Callable[[str, int, int], None] | None = None) -> Check:
    progress = on_progress or (lambda phase, d, t: None)
    qs = [casc.validate(Query(text=t, size=10)) for t in texts]
    for i, q in enumerate(qs):  # warm every path once (models, caches of the backend)
        await casc.search(q, validated=True)
        progress("warm-up", i + 1, len(qs))
    alone = []
    for i, q in enumerate(qs):
        t = time.perf_counter()
        await casc.search(q, validated=True)
        alone.append((time.perf_counter() - t) * 1e3)
        progress("service time alone", i + 1, len(qs))
    out = Check(dataset, split, len(qs), alone)
    rng = np.random.default_rng(seed)
    for rate in rates:
        arrivals = poisson_arrivals(rate, per_rate, seed + int(rate * 1000))
        which = rng.integers(0, len(qs), per_rate)
        slot = asyncio.Semaphore(1)  # FIFO: waiters are woken in arrival order
        lat = np.zeros(per_rate)
        served = np.zeros(per_rate)
        t0 = time.perf_counter()
        done = 0

        async def one(i: int) -> None:
            nonlocal done
            await asyncio.sleep(max(0.0, arrivals[i] / 1e3 - (time.perf_counter() - t0)))
            arrived = time.perf_counter()
            async with slot:
                s = time.perf_counter()
                await casc.search(qs[which[i]], validated=True)
                e = time.perf_counter()
            lat[i], served[i] = (e - arrived) * 1e3, (e - s) * 1e3
            done += 1
            progress(f"{rate:g} queries/s", done, per_rate)

        await asyncio.gather(*(one(i) for i in range(per_rate)))
        sim = simulate(arrivals, [[Visit(0, alone[w])] for w in which], [Station("replica", 1)])
        replay = simulate(arrivals, [[Visit(0, x)] for x in served], [Station("replica", 1)])
        warm = per_rate // 10
        meas = lat[warm:]
        out.rates.append(RateCheck(rate, per_rate - warm, rate * float(np.mean(alone)) / 1000.0,
                                   float(np.percentile(meas, 50)), float(np.percentile(meas, 95)),
                                   float(np.percentile(sim.latency_ms[warm:], 50)),
                                   float(np.percentile(sim.latency_ms[warm:], 95)), float(served.mean()),
                                   float(np.percentile(replay.latency_ms[warm:], 50)),
                                   float(np.percentile(replay.latency_ms[warm:], 95))))
    return out
