"""Micro-batching: concurrent cross-encoder requests scored together, in one model thread.

Per request, a local cross-encoder scores its 20 or so pairs in one small
forward pass, and under load every request's pass runs in its own thread at
the same time, each asking torch (or ONNX Runtime) for all the cores. A
:class:`MicroBatcher` sits in front of a local scorer instead: concurrent
``await batcher.score(query, docs)`` calls are queued, and one worker
collects them until ``max_pairs`` pairs are queued or ``max_wait_ms`` has
passed since the oldest one arrived (requests that arrive while the model is
busy are taken at once: they have waited already). Their pairs are then
tokenized, length-sorted across requests and scored in a single dedicated
thread, so tokenization and inference stay off the event loop and model calls
never run two at a time. Each caller gets its own scores.

Faults stay per request: a poisoned document gets its own request's fallback
score (see :func:`cascade.models.pair_encoding.score_requests`); a broken model
fails every request of that pass with the exception, and the next pass tries
again. A caller that is cancelled while it waits is dropped, not scored; one
cancelled during a pass simply never reads its result.

:class:`cascade.models.scorers.Batched` puts a batcher in a stage's scorer at
build time, under the pair-score cache when there is one (the cache awaits
the batcher for its misses: nothing waits on the loop from a thread).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)


@runtime_checkable
class MultiRequestScorer(Protocol):
    """A local pair scorer that can score several (query, documents) requests in one pass."""

    name: str

    def score(self, query: str, docs: list[str]) -> np.ndarray: ...

    def score_many(self, requests: list[tuple[str, list[str]]]) -> list[np.ndarray]: ...


def supports_micro_batch(scorer: Any) -> bool:
    return callable(getattr(scorer, "score_many", None)) and callable(getattr(scorer, "score", None))


@dataclass
class BatcherStats:
    """What the batcher did: passes (``score_many`` calls), the requests and pairs they carried."""

    passes: int = 0
    requests: int = 0
    pairs: int = 0
    failed_passes: int = 0
    cancelled: int = 0  # requests dropped before their pass because the caller had gone
    largest: int = 0  # most requests in one pass

    @property
    def requests_per_pass(self) -> float:
        return self.requests / self.passes if self.passes else 0.0


@dataclass
class _Request:
    query: str
    docs: list[Any]
    future: asyncio.Future
    arrived: float


@dataclass
class _LoopState:
    """The queue and worker of one event loop (the service has one; tests and scripts may run several in turn)."""

    loop: asyncio.AbstractEventLoop
    pending: deque[_Request] = field(default_factory=deque)
    pairs: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task | None = None


class MicroBatcher:
    """Merges concurrent ``score`` calls into passes of at most ``max_pairs`` pairs (whole requests only).

    ``max_wait_ms`` bounds how long the first request of a pass waits for company;
    a request with ``max_pairs`` or more pairs goes alone, at once.
    """

    def __init__(self, scorer: MultiRequestScorer, max_wait_ms: float = 2.0, max_pairs: int = 256):
        if not supports_micro_batch(scorer):
            raise TypeError(f"{getattr(scorer, 'name', scorer)!r} cannot score several requests at once "
                            "(micro-batching is for the local backends, torch and onnx)")
        if max_wait_ms < 0 or max_pairs < 1:
            raise ValueError("max_wait_ms must be >= 0 and max_pairs >= 1")
        self.scorer, self.max_wait_s, self.max_pairs = scorer, max_wait_ms / 1000.0, max_pairs
        self.name = scorer.name
        # One thread: model calls never overlap (and never fight each other for the cores).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cascade-microbatch")
        self._states: dict[int, _LoopState] = {}  # by id(loop); states of closed loops are dropped
        self.stats = BatcherStats()

    async def score(self, query: str, docs: list[Any]) -> np.ndarray:
        """This request's scores, computed in a pass shared with the requests queued beside it."""
        docs = list(docs)
        if not docs:
            return np.zeros(0)
        loop = asyncio.get_running_loop()
        st = self._states.get(id(loop))
        if st is None or st.loop is not loop:
            self._states = {k: v for k, v in self._states.items() if not v.loop.is_closed()}
            st = self._states[id(loop)] = _LoopState(loop)
        fut = loop.create_future()
        st.pending.append(_Request(query, docs, fut, loop.time()))
        st.pairs += len(docs)
        if st.worker is None or st.worker.done():
            st.worker = loop.create_task(self._work(loop, st), name="cascade-microbatch")
        else:
            st.wake.set()
        return await fut  # cancelling the caller cancels fut; the worker then skips it

    async def _work(self, loop: asyncio.AbstractEventLoop, st: _LoopState) -> None:
        """Runs while requests are queued, then ends (the next request starts a new worker)."""
        taken: list[_Request] = []
        try:
            while self._drop_cancelled(st):
                while st.pairs < self.max_pairs:
                    left = st.pending[0].arrived + self.max_wait_s - loop.time()
                    if left <= 0:
                        break
                    st.wake.clear()
                    try:
                        await asyncio.wait_for(st.wake.wait(), left)
                    except TimeoutError:
                        break
                if not self._drop_cancelled(st):
                    break
                taken = self._take(st)
                await self._run(loop, taken)
                taken = []
            st.worker = None  # drained: the next request starts a new worker
        except BaseException as exc:  # the worker itself is cancelled (loop shutting down) or broke
            for r in [*taken, *st.pending]:
                if not r.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        r.future.cancel()
                    else:
                        r.future.set_exception(exc)
            st.pending.clear()
            st.pairs = 0
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.exception("cross-encoder micro-batcher stopped; its waiting requests failed")

    def _drop_cancelled(self, st: _LoopState) -> bool:
        """Forget requests whose callers have gone; True when any request is left."""
        if any(r.future.done() for r in st.pending):
            keep = [r for r in st.pending if not r.future.done()]
            self.stats.cancelled += len(st.pending) - len(keep)
            st.pending = deque(keep)
            st.pairs = sum(len(r.docs) for r in keep)
        return bool(st.pending)

    def _take(self, st: _LoopState) -> list[_Request]:
        """Whole requests from the front of the queue, up to max_pairs pairs (at least one request)."""
        taken, pairs = [], 0
        while st.pending and (not taken or pairs + len(st.pending[0].docs) <= self.max_pairs):
            r = st.pending.popleft()
            taken.append(r)
            pairs += len(r.docs)
        st.pairs -= pairs
        return taken

    async def _run(self, loop: asyncio.AbstractEventLoop, reqs: list[_Request]) -> None:
        s = self.stats
        s.passes += 1
        s.requests += len(reqs)
        s.pairs += sum(len(r.docs) for r in reqs)
        s.largest = max(s.largest, len(reqs))
        try:
            results = await loop.run_in_executor(self._executor, self.scorer.score_many,
                                                 [(r.query, r.docs) for r in reqs])
            if len(results) != len(reqs):
                raise RuntimeError(f"{self.name}: score_many returned {len(results)} results for {len(reqs)} requests")
        except Exception as exc:  # noqa: BLE001
            # A broken model: every request of this pass fails with its error; the next pass tries again.
            s.failed_passes += 1
            log.warning("cross-encoder micro-batch of %d requests failed: %s", len(reqs), exc)
            for r in reqs:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        for r, res in zip(reqs, results):
            if not r.future.done():
                r.future.set_result(res)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
