"""Behaviour aggregates in Redis, for popularity and personalized LTR features: reads on the search path, and the
aggregating consumer's state, written in one transaction per batch of the event stream.

Layout, per index (values are what :mod:`features.personal` encodes; nothing here interprets them)::

    cascade:bh:{index}:doc           hash  document id -> decayed impressions and clicks
    cascade:bh:{index}:ent:{entity}  hash  keyword value -> decayed clicks, for u:USER, s:SEGMENT and g (everyone)
    cascade:bh:{index}:cursor        the id of the last stream record applied
    cascade:bh:{index}:q:{query_id}  what a logged search showed and to whom, until its clicks arrive (TTL)
    cascade:bh:{index}:ev:{event_id} an event already counted (TTL)

The consumer reads the event stream (:data:`connectors.events.STREAM`) from
its cursor, in order, and commits each batch's changes together with the new
cursor under ``WATCH`` of the cursor: a batch is applied once and entirely, a
consumer that crashes resumes from the last commit, and a second consumer
started by mistake loses the race instead of counting twice.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Iterable

from connectors.events import STREAM, _client, _decode, _id


def prefix(index: str) -> str:
    return f"cascade:bh:{index}:"


def _s(v: Any) -> str | None:
    return None if v is None else v.decode() if isinstance(v, bytes) else str(v)


def _map(d: dict) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in d.items()}  # type: ignore[misc]


_clients: dict[tuple[str, int], Any] = {}


def client_for(url: str, timeout_s: float = 0.5) -> Any:
    """A pooled asyncio client for the running event loop (a client is bound to the loop it connected on)."""
    key = (url, id(asyncio.get_running_loop()))
    c = _clients.get(key)
    if c is None:
        c = _clients[key] = _client(url, timeout_s, max_connections=32)
    return c


async def read_features(client: Any, index: str, docs: list[str], entities: list[str]
                        ) -> tuple[list[str | None], list[dict[str, str]]]:
    """One round trip: the documents' counters (``docs`` may include the index-wide key) and the entities'
    hashes."""
    p = prefix(index)
    pipe = client.pipeline(transaction=False)
    pipe.hmget(p + "doc", docs) if docs else pipe.ping()
    for e in entities:
        pipe.hgetall(p + "ent:" + e)
    got = await pipe.execute()
    doc_vals = [_s(v) for v in got[0]] if docs else []
    return doc_vals, [_map(h) for h in got[1:]]


async def read_state(client: Any, index: str, docs: Iterable[str], entities: Iterable[str],
                     query_ids: Iterable[str], event_ids: Iterable[str]) -> dict[str, Any]:
    """What a consumer batch needs, in one round trip: counters, entity hashes, logged searches, seen events."""
    p = prefix(index)
    docs, entities, query_ids, event_ids = list(docs), list(entities), list(query_ids), list(event_ids)
    pipe = client.pipeline(transaction=False)
    if docs:
        pipe.hmget(p + "doc", docs)
    for e in entities:
        pipe.hgetall(p + "ent:" + e)
    for q in query_ids:
        pipe.get(p + "q:" + q)
    for ev in event_ids:
        pipe.exists(p + "ev:" + ev)
    got = iter(await pipe.execute())
    out: dict[str, Any] = {"docs": dict(zip(docs, (_s(v) for v in next(got)))) if docs else {}}
    out["entities"] = {e: _map(next(got)) for e in entities}
    out["queries"] = {q: json.loads(v) for q in query_ids if (v := _s(next(got))) is not None}
    out["events"] = {ev for ev in event_ids if next(got)}
    return out


async def cursor(client: Any, index: str) -> str:
    return _s(await client.get(prefix(index) + "cursor")) or "0-0"


async def records_after(client: Any, after: str, count: int, block_ms: int) -> list[tuple[str, str, dict[str, Any]]]:
    """Up to ``count`` stream records after id ``after`` (waiting up to ``block_ms`` for one; 0: not at all)."""
    got = await client.xread({STREAM: after}, count=count, block=block_ms or None)
    out = []
    for _, entries in got or []:
        for sid, fields in entries:
            kind, data = _decode(fields)
            out.append((_id(sid), kind, data))
    return out


async def commit(client: Any, index: str, expected: str, new_cursor: str, docs: dict[str, str],
                 entities: dict[str, dict[str, str]], queries: dict[str, dict[str, Any]], events: Iterable[str],
                 ttl_s: int) -> bool:
    """Write a batch's changes and advance the cursor, unless another writer moved it (False: reload, retry)."""
    from redis.exceptions import WatchError

    p = prefix(index)
    async with client.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(p + "cursor")
            now = _s(await pipe.get(p + "cursor")) or "0-0"
            if now != expected:
                await pipe.unwatch()
                return False
            pipe.multi()
            if docs:
                pipe.hset(p + "doc", mapping=docs)
            for e, fields in entities.items():
                if fields:
                    pipe.hset(p + "ent:" + e, mapping=fields)
            for q, state in queries.items():
                pipe.set(p + "q:" + q, json.dumps(state, separators=(",", ":")), ex=ttl_s)
            for ev in events:
                pipe.set(p + "ev:" + ev, "1", ex=ttl_s)
            pipe.set(p + "cursor", new_cursor)
            await pipe.execute()
            return True
        except WatchError:
            return False


async def clear(client: Any, index: str) -> int:
    """Delete every aggregate of the index (a fresh start: the consumer then replays the stream)."""
    n = 0
    async for key in client.scan_iter(match=prefix(index) + "*", count=1000):
        n += await client.delete(key)
    return n
