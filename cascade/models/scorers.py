"""Pair scorers, composed once at build time: runtime, then micro-batcher, then pair-score cache.

A stage that scores (query, document) pairs asks its :class:`~cascade.stages.base.BuildContext`
for a scorer; the context composes it here, so nothing wraps a built stage
afterwards and every path (service, CLI, evaluation, benchmarks) scores
through the same layers:

``CachedPairScorer`` (optional) -> ``Batched`` (optional) or ``Threaded`` -> a runtime

Every layer is async (``await scorer.score(query, docs, deadline)``): blocking
runtimes (torch, ONNX Runtime) run in a worker thread or in the micro-batcher's
model thread, remote APIs are async clients, and no thread ever waits on the
event loop. A score is NaN where the document could not be scored; the stage
turns those into its fallback over the whole window, so a fallback is never
cached and never computed over a cache's misses alone.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from connectors.score_cache import PACK, PairStore


@runtime_checkable
class PairRuntime(Protocol):
    """A blocking model that scores pairs in this process (torch, ONNX Runtime)."""

    name: str
    stamp: str  # changes whenever the scores would: weights on disk, token limit, precision

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        """One score per document (NaN: could not be scored); raises when the model itself is broken."""
        ...


@runtime_checkable
class PairScorer(Protocol):
    """What a stage scores with: async, one score per document, NaN where a document could not be scored."""

    name: str
    stamp: str

    async def score(self, query: str, docs: list[str], deadline: float | None = None) -> np.ndarray: ...

    async def close(self) -> None: ...


class Threaded:
    """A blocking runtime in a worker thread, one call per request."""

    def __init__(self, runtime: PairRuntime):
        self.runtime, self.name, self.stamp = runtime, runtime.name, runtime.stamp
        self.dtype = getattr(runtime, "dtype", None)

    async def score(self, query: str, docs: list[str], deadline: float | None = None) -> np.ndarray:
        if not docs:
            return np.zeros(0)
        return await asyncio.to_thread(self.runtime.score, query, docs)

    async def close(self) -> None:
        return None


class Batched:
    """A local runtime behind a :class:`~cascade.models.microbatch.MicroBatcher` (one model thread)."""

    def __init__(self, runtime: Any, max_wait_ms: float, max_pairs: int):
        from cascade.models.microbatch import MicroBatcher

        self.runtime, self.name, self.stamp = runtime, runtime.name, runtime.stamp
        self.dtype = getattr(runtime, "dtype", None)
        self.batcher = MicroBatcher(runtime, max_wait_ms, max_pairs)

    async def score(self, query: str, docs: list[str], deadline: float | None = None) -> np.ndarray:
        return await self.batcher.score(query, docs)

    async def close(self) -> None:
        self.batcher.close()


class CachedPairScorer:
    """Asks ``store`` first and the scorer behind it only for the pairs it lacks; stores finite scores only.

    Keys hash the model ``stamp`` (weights on disk, token limit, precision) with
    the query and the document text, so a retrained model never reads the old
    model's scores.
    """

    def __init__(self, inner: PairScorer, store: PairStore, ttl_s: float,
                 on_lookup: Callable[[int, int], None] | None = None):
        self.inner, self.store, self.ttl_s = inner, store, ttl_s
        self.name, self.stamp = inner.name, inner.stamp
        self.dtype = getattr(inner, "dtype", None)
        self.on_lookup = on_lookup  # (pairs found, pairs scored by the model)

    def key(self, query: str, doc: str) -> str:
        h = hashlib.blake2b(digest_size=20)
        for part in (self.stamp, query, doc):
            b = part.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        return "cascade:pair:" + h.hexdigest()

    async def score(self, query: str, docs: list[str], deadline: float | None = None) -> np.ndarray:
        if not docs:
            return np.zeros(0)
        keys = [self.key(query, d) for d in docs]
        got = await self.store.get_many(keys)
        scores = np.full(len(docs), np.nan)
        missing: list[int] = []
        for i, v in enumerate(got):
            if v is not None and len(v) == PACK.size:
                scores[i] = PACK.unpack(v)[0]
            else:
                missing.append(i)
        if missing:
            fresh = np.asarray(await self.inner.score(query, [docs[i] for i in missing], deadline), dtype=np.float64)
            scores[missing] = fresh
            fill = {keys[i]: PACK.pack(float(s)) for i, s in zip(missing, fresh) if np.isfinite(s)}
            if fill:
                await self.store.set_many(fill, self.ttl_s)
        if self.on_lookup:
            self.on_lookup(len(docs) - len(missing), len(missing))
        return scores

    async def close(self) -> None:
        await self.inner.close()  # the store belongs to the service, which closes it


def compose(runtime: Any, *, micro_batch: Any = None, store: PairStore | None = None, ttl_s: float = 86_400,
            on_lookup: Callable[[int, int], None] | None = None) -> PairScorer:
    """The scorer a stage uses: ``runtime`` (blocking, or already async), micro-batched and cached as asked."""
    if isinstance(runtime, PairScorer) and asyncio.iscoroutinefunction(runtime.score):
        scorer: Any = runtime  # remote APIs are async clients already
    elif micro_batch is not None and callable(getattr(runtime, "score_many", None)):
        scorer = Batched(runtime, micro_batch.max_wait_ms, micro_batch.max_pairs)
    else:
        scorer = Threaded(runtime)
    if store is not None:
        scorer = CachedPairScorer(scorer, store, ttl_s, on_lookup)
    return scorer
