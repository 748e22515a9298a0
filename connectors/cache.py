"""Result caches for the search service: Redis when configured, an in-process LRU otherwise.

A cache here is an optimisation, never a dependency: every failure (refused
connection, timeout, a Redis that stopped answering) is swallowed, counted
through ``on_error`` and answered as a miss, so searches go on uncached. After
a failure Redis is left alone for ``retry_s`` seconds so that a dead server
costs one timeout per window rather than one per request; the first call after
the window tries again, which is how caching resumes by itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    from cascade.settings import Settings

log = logging.getLogger(__name__)

ErrorHook = Callable[[str, BaseException], None]  # (operation, exception)


@runtime_checkable
class ResultCache(Protocol):
    """Bytes by key with a lifetime. ``get`` answers None for a miss *and* for a failure."""

    backend: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def ping(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class LRU:
    """A size-bounded mapping whose entries expire; thread-safe so blocking callers can share it."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float | None = None) -> bytes | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            if item[0] <= now:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return item[1]

    def set(self, key: str, value: bytes, ttl_s: float, now: float | None = None) -> None:
        if self.max_items <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            self._data[key] = (now + ttl_s, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class MemoryCache:
    """The default without Redis: per process, lost on restart, nothing to fail."""

    backend = "memory"

    def __init__(self, max_items: int = 10_000):
        self.lru = LRU(max_items)

    async def get(self, key: str) -> bytes | None:
        return self.lru.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self.lru.set(key, value, ttl_s)

    async def ping(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "state": "up", "items": len(self.lru), "max_items": self.lru.max_items}

    async def close(self) -> None:
        return None


class Breaker:
    """Remembers a recent failure so callers skip the dependency until ``retry_s`` has passed."""

    def __init__(self, retry_s: float):
        self.retry_s = retry_s
        self.down_until = 0.0
        self.last_error: str | None = None

    def open(self) -> bool:
        return time.monotonic() < self.down_until

    def trip(self, exc: BaseException) -> None:
        self.down_until = time.monotonic() + self.retry_s
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def reset(self) -> None:
        self.down_until = 0.0


async def _never() -> None:  # pragma: no cover - only reached through the open breaker, which skips it
    return None


def reconnect_once() -> Any:
    """redis-py's retry policy for every cascade Redis client: one retry, on a fresh connection, for a
    connection error only.

    After Redis restarts, every pooled connection is dead; the first command on
    each fails with "Connection closed by server". Retrying that once on a new
    connection (redis-py disconnects the dead one before it retries) answers the
    command instead of tripping the breaker for a second of uncached searches.
    Timeouts are not retried: a paused or slow Redis is what the breaker is for.
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


class RedisCache:
    """redis-py asyncio over a ``BlockingConnectionPool``, with short timeouts and one reconnect per command."""

    backend = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.1, max_connections: int = 64, retry_s: float = 1.0,
                 on_error: ErrorHook | None = None):
        import redis.asyncio as aredis

        self.url = url
        self.timeout_s = timeout_s
        self.on_error = on_error
        self.breaker = Breaker(retry_s)
        # A dead pooled connection is replaced and the command retried once (reconnect_once); any other
        # failure is not retried here: the breaker decides when Redis is worth another try.
        kwargs = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=reconnect_once(),
                      health_check_interval=0)
        self.pool = aredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout_s,
                                                          **kwargs)
        self.client = aredis.Redis(connection_pool=self.pool, retry=reconnect_once())
        self.errors = 0
        self.skipped = 0
        self._pending: list[tuple[str, asyncio.Future]] = []

    def _failed(self, op: str, exc: BaseException) -> None:
        first = not self.breaker.open()
        self.breaker.trip(exc)
        self.errors += 1
        if first:
            log.warning("redis cache %s failed (%s); serving uncached for %.1f s", op, self.breaker.last_error,
                        self.breaker.retry_s)
        if self.on_error:
            self.on_error(op, exc)

    async def _call(self, op: str, coro_fn: Callable[[], Any]) -> Any:
        if self.breaker.open():
            self.skipped += 1
            if self.on_error:
                self.on_error(op + "_skipped", ConnectionError("redis marked down"))
            return None
        try:
            # The socket timeout bounds each read; this bounds the whole call (pool wait, connect, write, read).
            async with asyncio.timeout(self.timeout_s * 3):
                out = await coro_fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RedisError, OSError, TimeoutError: all mean "no cache this time"
            self._failed(op, exc)
            return None
        return out

    async def get(self, key: str) -> bytes | None:
        """Lookups that arrive in the same event-loop turn go to Redis as one MGET.

        Under load many requests are parsed in one turn; one round trip (and one
        command for Redis to run) for all of them is most of what keeps a hit cheap.
        """
        if self.breaker.open():
            return await self._call("get", _never)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._pending.append((key, fut))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        asyncio.ensure_future(self._mget(batch))

    async def _mget(self, batch: list[tuple[str, asyncio.Future]]) -> None:
        keys = [k for k, _ in batch]
        try:
            values = await self._call("get", lambda: self.client.mget(keys))
        except BaseException:  # cancelled at shutdown: nobody waits for a value any more
            values = None
        for (_, fut), value in zip(batch, values or [None] * len(batch)):
            if not fut.done():
                fut.set_result(value)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._call("set", lambda: self.client.set(key, value, px=max(1, int(ttl_s * 1000))))

    async def ping(self) -> bool:
        """Checks Redis now, ignoring the breaker; a success closes it."""
        try:
            async with asyncio.timeout(self.timeout_s * 3):
                ok = bool(await self.client.ping())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed("ping", exc)
            return False
        self.breaker.reset()
        return ok

    def status(self) -> dict[str, Any]:
        down = self.breaker.open()
        out: dict[str, Any] = {"backend": self.backend, "state": "down" if down else "up", "errors": self.errors}
        if self.breaker.last_error:
            out["last_error"] = self.breaker.last_error
        return out

    async def close(self) -> None:
        try:
            await self.client.aclose()
            await self.pool.aclose()
        except Exception:  # closing a pool whose server is gone must not fail shutdown
            pass


def make_cache(settings: "Settings", on_error: ErrorHook | None = None) -> ResultCache:
    """Redis when ``CASCADE_REDIS_URL`` is set, else the in-process LRU."""
    if settings.redis_url:
        return RedisCache(settings.redis_url, timeout_s=settings.redis_timeout_s,
                          max_connections=settings.redis_max_connections, retry_s=settings.redis_retry_s,
                          on_error=on_error)
    return MemoryCache(settings.memory_cache_items)
