"""Two guards for uncached searches on a small machine: single-flight and admission.

Single-flight: when a popular query misses the cache (a deploy, an expired
entry), every identical request arriving while the first one computes waits
for that computation instead of starting its own. The computation runs in its
own task, so a client that disconnects neither cancels it for the others nor
loses the cache fill.

Admission: a cascade is CPU-bound model inference; running more of them at
once than the machine has cores only makes each slower. A bounded number run,
a bounded number wait, and the rest are turned away at once (503 with
Retry-After) instead of queueing until every caller times out. Cache hits
never pass through here.
"""

from __future__ import annotations

import asyncio
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
    """More uncached searches are waiting than the service is configured to queue."""


class Admission:
    def __init__(self, limit: int, queue: int):
        self.limit, self.queue = limit, queue
        self._sem = asyncio.Semaphore(limit)
        self.running = 0
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._sem.locked() and self.waiting >= self.queue:
            raise Overloaded(f"{self.running} searches running and {self.waiting} waiting (the limits are "
                             f"{self.limit} and {self.queue}); retry shortly")
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()
