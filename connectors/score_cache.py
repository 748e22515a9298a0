"""Stores for cached pair scores per (query, document): an in-process LRU or Redis.

The scorer that uses them (:class:`cascade.models.scorers.CachedPairScorer`)
is composed in front of a model at build time. Both stores are async; the
Redis one uses redis-py's asyncio client with the same short timeouts and
fail-open behaviour as the result cache.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Protocol

from connectors.cache import LRU, Breaker, ErrorHook, reconnect_once

if TYPE_CHECKING:
    from cascade.settings import Settings

log = logging.getLogger(__name__)
PACK = struct.Struct("<d")  # one float64 per pair


class PairStore(Protocol):
    backend: str

    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    async def set_many(self, items: dict[str, bytes], ttl_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryPairStore:
    backend = "memory"

    def __init__(self, max_items: int = 100_000):
        self.lru = LRU(max_items)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.lru.get(k) for k in keys]

    async def set_many(self, items: dict[str, bytes], ttl_s: float) -> None:
        for k, v in items.items():
            self.lru.set(k, v, ttl_s)

    async def close(self) -> None:
        return None


class RedisPairStore:
    """MGET for the lookups, one pipeline of PSETEX for the fills, on redis-py's asyncio client.

    Failures read as misses (the model scores the pairs itself) and trip a
    breaker, so a dead or paused Redis costs one short timeout, then nothing
    until ``retry_s`` has passed.
    """

    backend = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.1, max_connections: int = 16, retry_s: float = 1.0,
                 on_error: ErrorHook | None = None):
        import redis.asyncio as aioredis

        self.pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry=reconnect_once())
        self.client = aioredis.Redis(connection_pool=self.pool, retry=reconnect_once())
        self.timeout_s = timeout_s
        self.breaker = Breaker(retry_s)
        self.on_error = on_error

    def _failed(self, op: str, exc: BaseException) -> None:
        if not self.breaker.open():
            log.warning("redis pair-score cache %s failed (%s: %s); scoring uncached for %.1f s", op,
                        type(exc).__name__, exc, self.breaker.retry_s)
        self.breaker.trip(exc)
        if self.on_error:
            self.on_error(op, exc)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys or self.breaker.open():
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self.timeout_s * 3):  # a paused server: bounded, whatever the socket does
                return list(await self.client.mget(keys))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure is a miss: the model scores the pairs itself
            self._failed("pair_get", exc)
            return [None] * len(keys)

    async def set_many(self, items: dict[str, bytes], ttl_s: float) -> None:
        if not items or self.breaker.open():
            return
        try:
            async with asyncio.timeout(self.timeout_s * 3):
                pipe = self.client.pipeline(transaction=False)
                ms = max(1, int(ttl_s * 1000))
                for k, v in items.items():
                    pipe.psetex(k, ms, v)
                await pipe.execute()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed("pair_set", exc)

    async def close(self) -> None:
        try:
            await self.client.aclose()
            await self.pool.aclose()
        except Exception:  # closing a pool whose server is gone must not fail shutdown
            pass


def make_pair_store(settings: "Settings", on_error: ErrorHook | None = None) -> PairStore:
    if settings.redis_url:
        return RedisPairStore(settings.redis_url, timeout_s=settings.redis_timeout_s, retry_s=settings.redis_retry_s,
                              on_error=on_error)
    return MemoryPairStore(max(settings.memory_cache_items * 10, 1000))
