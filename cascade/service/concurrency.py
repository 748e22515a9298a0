"""Two guards for uncached searches on a small machine: single-flight and admission.

Single-flight: when a popular query misses the cache (a deploy, an expired
entry), every identical request arriving while the first one computes waits
for that computation instead of starting its own. The computation runs in its
own task, so a client that disconnects neither cancels it for the others nor
loses the cache fill.

Admission: a cascade is CPU-bound model inference; running more of them at
once than the machine has cores only makes each slower. A bounded number run,
a bounded number wait, and a request that would wait longer than it can (its
budget, the search timeout, CASCADE_MAX_QUEUE_WAIT_S) is turned away at once
(503 with Retry-After) instead of queueing until every caller times out.
Cache hits never pass through here.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def do(self, key: str, fn: Callable[[], Awaitable[T]], timeout_s: float | None = None) -> tuple[T, bool]:
        """``(result, shared)``: shared is True when another request's computation answered this one."""
        task = self._flights.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(fn())
            self._flights[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        if timeout_s is None:
            return await asyncio.shield(task), shared
        return await asyncio.wait_for(asyncio.shield(task), timeout_s), shared

    def _done(self, key: str, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # every waiter may have gone: mark the exception as seen


class Overloaded(Exception):
    """An uncached search turned away at once: the queue is full, or its wait would outlast the request."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> str:
        """The Retry-After header: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class Admission:
    """At most ``limit`` uncached searches run; the rest wait, unless waiting cannot pay.

    A request is turned away at once (503 + Retry-After) when ``queue`` are
    already waiting, or when its expected wait exceeds what it has: the
    tighter of its own deadline (its latency budget, the search timeout) and
    ``max_wait_s``. The expected wait is the number of searches that must
    finish before it starts, times the recent interval between finishing
    searches while others waited (an exponentially weighted mean: it follows
    the load, contention included); before any such interval is seen, the
    recent time a search held a slot divided among the slots. A caller told to
    come back in two seconds can retry elsewhere; one left queueing for twenty
    gets the same answer later, after everybody behind it waited too.

    Occupancy counts running and waiting searches together: right after a
    slot is released its next holder is still waking up, and an arrival in
    that moment must not see a free slot ahead of the queue.
    """

    def __init__(self, limit: int, queue: int, max_wait_s: float | None = None, alpha: float = 0.2):
        self.limit, self.queue, self.max_wait_s, self.alpha = limit, queue, max_wait_s, alpha
        self._sem = asyncio.Semaphore(limit)
        self.running = 0
        self.waiting = 0
        self.hold_s: float | None = None  # recent mean time a search holds a slot; None until one finished
        self.interval_s: float | None = None  # recent mean time between finishing searches while others waited
        self._last_done: float | None = None

    def ahead(self) -> int:
        """Searches that must finish before one arriving now can start (0: a slot is free for it)."""
        return max(0, self.running + self.waiting + 1 - self.limit)

    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait for a slot (0 while one is free or nothing is known)."""
        n = self.ahead()
        if n == 0:
            return 0.0
        if self.interval_s is not None:
            return n * self.interval_s
        return n * self.hold_s / self.limit if self.hold_s is not None else 0.0

    def _observe(self, held_s: float, now: float, saturated: bool) -> None:
        a = self.alpha
        self.hold_s = held_s if self.hold_s is None else self.hold_s + a * (held_s - self.hold_s)
        if saturated and self._last_done is not None:
            sample = now - self._last_done  # the queue's real pace
        elif self.interval_s is not None:
            # Nobody waits, so there is no gap to measure; what this search took, shared among the slots,
            # keeps the estimate moving (else one slow spell would shed every request until a restart).
            sample = held_s / self.limit
        else:
            sample = None
        if sample is not None:
            self.interval_s = sample if self.interval_s is None else self.interval_s + a * (sample - self.interval_s)
        self._last_done = now if saturated else None

    def _refuse(self, message: str, wait_s: float) -> Overloaded:
        # Spread the retries: clients told the same second come back together and meet a full queue again.
        return Overloaded(message, max(wait_s, 1.0) * random.uniform(1.0, 1.5))

    @asynccontextmanager
    async def slot(self, deadline_s: float | None = None) -> AsyncIterator[float]:
        """Hold a slot; yields the seconds spent waiting for it (which the caller's budget has lost)."""
        if self.ahead() > 0:
            wait = self.expected_wait_s()
            if self.waiting >= self.queue:
                raise self._refuse(f"{self.running} searches running and {self.waiting} waiting (the limits are "
                                   f"{self.limit} and {self.queue}); retry shortly", wait)
            allowed = min((x for x in (deadline_s, self.max_wait_s) if x is not None), default=None)
            if allowed is not None and wait > allowed:
                raise self._refuse(f"the expected wait for a search slot is {wait:.1f} s ({self.waiting} waiting "
                                   f"for {self.limit} slots), longer than the {allowed:.1f} s this request can "
                                   f"wait; retry later", wait)
        t0 = time.perf_counter()
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        waited = time.perf_counter() - t0
        self.running += 1
        t1 = time.perf_counter()
        try:
            yield waited
        finally:
            self.running -= 1
            now = time.perf_counter()
            self._observe(now - t1, now, saturated=self.waiting > 0)
            self._sem.release()
