"""How a ranking runs in the service, for the search path and the rerank APIs alike.

Two steps, one error path:

- :func:`admitted` runs one cascade call within an admission pool (a slot, or 503 + Retry-After at once
  when waiting cannot pay), counts it in the in-flight gauge and the per-step metrics, keeps the index
  entry open while it runs, and turns every failure into the :class:`~cascade.service.errors.ApiError`
  the search API answers (overloaded 503, a bad query 422, a backend 502/503, a bug 500 with the request
  id in the log). The rerank APIs translate those into their own bodies and statuses.
- :func:`computed_once` looks the result cache up, runs the computation once for every identical request
  in flight (single-flight: the computation is its own task, so a caller that gives up, or times out,
  neither cancels it for the others nor loses the cache fill), stores what is worth storing, and answers
  a wait past the timeout with 504.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Generic, TypeVar

from cascade.controller import SearchResult
from cascade.errors import AllRetrieversFailed, CascadeError, QueryError
from cascade.service.concurrency import Admission, Overloaded
from cascade.service.errors import ApiError, from_query_error
from cascade.text import public_reason

if TYPE_CHECKING:
    from cascade.service.registry import IndexEntry
    from cascade.service.state import ServiceState

log = logging.getLogger(__name__)

T = TypeVar("T")


async def admitted(state: ServiceState, entry: IndexEntry, run: Callable[[float], Awaitable[SearchResult]], *,
                   deadline_s: float, request_id: str = "", admission: Admission | None = None,
                   what: str = "search") -> SearchResult:
    """``run(waited_s)`` within a slot of ``admission`` (the searches' pool by default); ApiError on failure.

    ``deadline_s``: the longest this request can wait for a slot (its budget, its timeout); ``waited_s``
    is what the wait took, which a latency budget has lost.
    """
    m = state.metrics
    entry.active += 1
    try:
        async with (admission or state.admission).slot(deadline_s) as waited_s:
            m.in_flight.inc()
            try:
                res = await run(waited_s)
            finally:
                m.in_flight.dec()
    except Overloaded as exc:
        m.rejected.labels(entry.name).inc()
        raise ApiError(503, None, f"overloaded: {exc}", "overloaded", headers={"Retry-After": exc.retry_after}) from None
    except QueryError as exc:
        raise from_query_error(exc) from None
    except AllRetrieversFailed as exc:  # the backend, not the request; its details go to the log only
        log.error("index %s: every retriever failed (request %s): %s", entry.name, request_id, exc)
        raise ApiError(503, None, f"index {entry.name}: every retriever failed; the search backend is not "
                                  f"answering (request {request_id} in the service log)", "search_failed") from None
    except CascadeError as exc:  # a backend refused or failed: not the caller's fault
        status = 502 if getattr(exc, "status", None) else 503
        raise ApiError(status, None, f"index {entry.name}: {public_reason(str(exc))}", "backend_error") from None
    except Exception as exc:  # a bug: logged with the request id, never shown to the caller
        log.error("index %s: %s failed (request %s)", entry.name, what, request_id, exc_info=exc)
        raise ApiError(500, None, f"internal error; request {request_id} is in the service log",
                       "internal") from None
    finally:
        state.release(entry)
    m.observe_result(entry.name, res)
    return res


@dataclass(frozen=True)
class Once(Generic[T]):
    """What :func:`computed_once` found: the stored bytes (a cache hit) or a computation's result (a miss)."""

    cached: bytes | None = None
    computed: T | None = None


async def computed_once(state: ServiceState, entry: IndexEntry, compute: Callable[[], Awaitable[T]], *,
                        key: str | None, ttl_s: int, encode: Callable[[T], bytes | None], flight_key: str,
                        timeout_s: float, late: str) -> Once[T]:
    """The bytes cached under ``key``, or ``compute()`` run once for all requests with the same ``flight_key``.

    ``key`` None: no cache lookup or fill. ``encode``: the bytes to store for a result, or None when it is
    not worth repeating for ``ttl_s`` (degraded, cut by a budget). ``late``: the 504's message, for a
    caller that waited ``timeout_s`` (the computation goes on, and fills the cache).
    """
    m = state.metrics
    if key is not None:
        got = await state.cache.get(key)
        if got is not None:
            m.child(m.cache_lookups, entry.name, "hit").inc()
            return Once(cached=got)
        m.child(m.cache_lookups, entry.name, "miss").inc()

    async def flight() -> T:
        out = await compute()
        if key is not None:
            body = encode(out)
            if body is not None:
                await state.cache.set(key, body, ttl_s)
        return out

    try:
        out, shared = await state.singleflight.do(flight_key, flight, timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, None, late, "timeout") from None
    if shared:
        m.singleflight_shared.labels(entry.name).inc()
    return Once(computed=out)
