"""A cache of cross-encoder scores per (query, document), wrapped around any pair scorer.

Result caching only helps when the whole request repeats; pair scores also
help when a query comes back with another filter, page or override, or when
two indexes share documents: the expensive model then scores only the pairs
it has never seen. The wrapper keeps the :class:`connectors.rerankers.PairScorer`
interface, so the stage that calls it does not know it is there.

``score`` is blocking (stages call it from a worker thread), so the stores
here are blocking too: a thread-safe LRU, or a synchronous Redis client with
the same short timeouts and fail-open behaviour as the result cache.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from connectors.cache import LRU, Breaker, ErrorHook

if TYPE_CHECKING:
    from cascade.settings import Settings

log = logging.getLogger(__name__)
_PACK = struct.Struct("<d")


class PairStore(Protocol):
    backend: str

    def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    def set_many(self, items: dict[str, bytes], ttl_s: float) -> None: ...


class MemoryPairStore:
    backend = "memory"

    def __init__(self, max_items: int = 100_000):
        self.lru = LRU(max_items)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.lru.get(k) for k in keys]

    def set_many(self, items: dict[str, bytes], ttl_s: float) -> None:
        for k, v in items.items():
            self.lru.set(k, v, ttl_s)


class RedisPairStore:
    """MGET for the lookups, one pipeline of PSETEX for the fills; failures read as misses."""

    backend = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.1, max_connections: int = 16, retry_s: float = 1.0,
                 on_error: ErrorHook | None = None):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
        self.client = redis.Redis(connection_pool=self.pool, retry=Retry(NoBackoff(), 0))
        self.breaker = Breaker(retry_s)
        self.on_error = on_error

    def _failed(self, op: str, exc: BaseException) -> None:
        if not self.breaker.open():
            log.warning("redis pair-score cache %s failed (%s: %s); scoring uncached for %.1f s", op,
                        type(exc).__name__, exc, self.breaker.retry_s)
        self.breaker.trip(exc)
        if self.on_error:
            self.on_error(op, exc)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys or self.breaker.open():
            return [None] * len(keys)
        try:
            return list(self.client.mget(keys))
        except Exception as exc:  # any failure is a miss: the model scores the pairs itself
            self._failed("pair_get", exc)
            return [None] * len(keys)

    def set_many(self, items: dict[str, bytes], ttl_s: float) -> None:
        if not items or self.breaker.open():
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            ms = max(1, int(ttl_s * 1000))
            for k, v in items.items():
                pipe.psetex(k, ms, v)
            pipe.execute()
        except Exception as exc:
            self._failed("pair_set", exc)

    def close(self) -> None:
        try:
            self.client.close()
            self.pool.disconnect()
        except Exception:
            pass


class CachedPairScorer:
    """A pair scorer that asks ``store`` first and the wrapped model only for the pairs it lacks.

    ``namespace`` must change whenever the scores would (model, max_length,
    dtype): the service derives it from the stage's ``describe()``.
    """

    def __init__(self, inner: Any, store: PairStore, ttl_s: float, namespace: str,
                 on_lookup: Callable[[int, int], None] | None = None):
        self.inner, self.store, self.ttl_s = inner, store, ttl_s
        self.namespace = namespace
        self.name = inner.name
        self.on_lookup = on_lookup  # (pairs found, pairs scored by the model)

    def __getattr__(self, attr: str) -> Any:  # dtype, batch_size, model: whatever describe() reads
        return getattr(self.inner, attr)

    def key(self, query: str, doc: str) -> str:
        h = hashlib.blake2b(digest_size=20)
        for part in (self.namespace, query, doc):
            b = part.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        return "cascade:pair:" + h.hexdigest()

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        if not docs:
            return np.zeros(0)
        keys = [self.key(query, d) for d in docs]
        got = self.store.get_many(keys)
        scores = np.empty(len(docs), dtype=np.float64)
        missing: list[int] = []
        for i, v in enumerate(got):
            if v is not None and len(v) == _PACK.size:
                scores[i] = _PACK.unpack(v)[0]
            else:
                missing.append(i)
        if missing:
            fresh = np.asarray(self.inner.score(query, [docs[i] for i in missing]), dtype=np.float64)
            scores[missing] = fresh
            self.store.set_many({keys[i]: _PACK.pack(float(s)) for i, s in zip(missing, fresh)}, self.ttl_s)
        if self.on_lookup:
            self.on_lookup(len(docs) - len(missing), len(missing))
        return scores


def make_pair_store(settings: "Settings", on_error: ErrorHook | None = None) -> PairStore:
    if settings.redis_url:
        return RedisPairStore(settings.redis_url, timeout_s=settings.redis_timeout_s, retry_s=settings.redis_retry_s,
                              on_error=on_error)
    return MemoryPairStore(max(settings.memory_cache_items * 10, 1000))
