"""Stores for cached pair scores per (query, document): an in-process LRU or Redis.

The scorer that uses them (:class:`cascade.models.scorers.CachedPairScorer`)
is composed in front of a model at build time. The Redis store is a
synchronous client with the same short timeouts and fail-open behaviour as
the result cache; the async scorer calls it from a worker thread, so the
event loop never waits on Redis.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Protocol

from connectors.cache import LRU, Breaker, ErrorHook

if TYPE_CHECKING:
    from cascade.settings import Settings

log = logging.getLogger(__name__)
PACK = struct.Struct("<d")  # one float64 per pair


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


def make_pair_store(settings: "Settings", on_error: ErrorHook | None = None) -> PairStore:
    if settings.redis_url:
        return RedisPairStore(settings.redis_url, timeout_s=settings.redis_timeout_s, retry_s=settings.redis_retry_s,
                              on_error=on_error)
    return MemoryPairStore(max(settings.memory_cache_items * 10, 1000))
