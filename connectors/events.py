"""Durable search events on Redis Streams: the query log, the event log, and the consumer that aggregates them.

One stream (``cascade:events``) holds, in order, a record for every logged
search (``k=q``: its query id, experiment, arm or interleaving teams, the hits
shown) and every user event posted to ``/v1/events`` (``k=e``). A search's
record is appended before its response is sent and an event's before the
2xx, so in the stream a query always precedes its events, and an event the
service acknowledged is in Redis (as durable as Redis's AOF makes it:
``appendfsync always`` survives a crash of Redis itself; ``everysec`` may
lose the last second).

A consumer group (``cascade-aggregates``) reads the stream. Each record is
applied to Redis-side aggregates by one Lua script, atomically, and only then
acknowledged: a consumer that dies replays its pending records when it (or
another consumer, after ``claim_idle_s``) resumes. Replays do not count twice:
the script marks each query and each event id as applied in the same
transaction that counts it. Events whose query is unknown (never logged, or
expired after ``query_ttl_s``) stay in the stream and are counted as orphans.

The stream is trimmed to about ``retention`` records (the raw log for
``cascade experiments export-ubi``); the service refuses new events with 503
once ``max_backlog`` records wait unconsumed, so trimming never drops a record
the consumer has not read (``retention`` must exceed ``max_backlog``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable

log = logging.getLogger(__name__)

STREAM = "cascade:events"
GROUP = "cascade-aggregates"
QSTATE = "cascade:xq:"  # + query_id: what the search showed, and which events were applied
ORPHANS = "cascade:xorphans"
ORPHAN_SEEN = "cascade:xorphan-seen:"  # + event_id
NONE_KEY = "cascade:xnone"  # the aggregate "key" of searches outside experiments (never written)


def agg_key(index: str, experiment: str, fingerprint: str) -> str:
    """Where one experiment design's counts live (a changed design starts new counts: see ExperimentConfig)."""
    return f"cascade:xagg:{index}:{experiment}:{fingerprint}"


def series_key(index: str, experiment: str, fingerprint: str) -> str:
    return f"cascade:xseries:{index}:{experiment}:{fingerprint}"


# A search's record: remember what was shown (document -> "team:rank") and count the impression served.
QUERY_SCRIPT = """
if redis.call('HSETNX', KEYS[1], 'created', '1') == 0 then return -1 end
local mode = ARGV[2]
redis.call('HSET', KEYS[1], 'mode', mode, 'arm', ARGV[3], 'n', ARGV[4], 'agg', KEYS[2], 'clicks', 0)
local off = tonumber(ARGV[6])
local pos = 1
local i = 7
while i < #ARGV do
  redis.call('HSET', KEYS[1], 'd:' .. ARGV[i], ARGV[i + 1] .. ':' .. (off + pos))
  i = i + 2
  pos = pos + 1
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
if mode == 'none' then return 0 end
local served = redis.call('HINCRBY', KEYS[2], 'served', 1)
if mode == 'ab' then
  redis.call('HINCRBY', KEYS[2], 'served:' .. ARGV[3], 1)
  if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[2], 'degraded:' .. ARGV[3], 1) end
else
  if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[2], 'degraded', 1) end
  if #ARGV >= 8 then redis.call('HINCRBY', KEYS[2], 'first:' .. ARGV[8], 1) end
end
return served
"""

# A user event: applied once (by event id) to its search's experiment.
EVENT_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('SET', KEYS[3], '1', 'NX', 'EX', tonumber(ARGV[5])) then
    redis.call('HINCRBY', KEYS[2], 'events', 1)
    redis.call('HINCRBY', KEYS[2], 'action:' .. ARGV[2], 1)
    return 'orphan'
  end
  return 'duplicate'
end
if redis.call('HSETNX', KEYS[1], 'e:' .. ARGV[1], '1') == 0 then return 'duplicate' end
local mode = redis.call('HGET', KEYS[1], 'mode')
if mode == 'none' then return 'ok' end
local agg = redis.call('HGET', KEYS[1], 'agg')
local arm = redis.call('HGET', KEYS[1], 'arm')
local action = ARGV[2]
local where = false
if ARGV[3] ~= '' then where = redis.call('HGET', KEYS[1], 'd:' .. ARGV[3]) end
local sfx = ''
if mode == 'ab' then sfx = ':' .. arm end
if action == 'impression' then
  redis.call('HINCRBY', agg, 'impressions' .. sfx, 1)
  return 'ok'
elseif action == 'dwell' then
  redis.call('HINCRBY', agg, 'dwell_n' .. sfx, 1)
  redis.call('HINCRBYFLOAT', agg, 'dwell' .. sfx, tonumber(ARGV[4]))
  return 'ok'
elseif action ~= 'click' then
  redis.call('HINCRBY', agg, 'action:' .. action .. sfx, 1)
  return 'ok'
end
if not where then
  redis.call('HINCRBY', agg, 'unattributed' .. sfx, 1)
  return 'unattributed'
end
local team = tonumber(string.match(where, '^(%-?%d+):'))
local rank = tonumber(string.match(where, ':(%d+)$'))
local x = tonumber(redis.call('HINCRBY', KEYS[1], 'clicks', 1))
redis.call('HINCRBY', agg, 'clicks' .. sfx, 1)
if x == 1 then redis.call('HINCRBY', agg, 'clicked' .. sfx, 1) end
if mode == 'ab' then
  redis.call('HINCRBY', agg, 'clicks2' .. sfx, 2 * x - 1)
  for _, k in ipairs({1, 3, 5, 10}) do
    if rank <= k then redis.call('HINCRBY', agg, 'c@' .. k .. sfx, 1) end
  end
  local best = tonumber(redis.call('HGET', KEYS[1], 'best') or '0')
  if best == 0 or rank < best then
    local old = 0
    if best > 0 then old = 1 / best end
    local new = 1 / rank
    redis.call('HSET', KEYS[1], 'best', rank)
    redis.call('HINCRBYFLOAT', agg, 'rr' .. sfx, new - old)
    redis.call('HINCRBYFLOAT', agg, 'rr2' .. sfx, new * new - old * old)
  end
  return 'ok'
end
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
local mine = tonumber(redis.call('HGET', KEYS[1], 'c:' .. team) or '0')
redis.call('HSET', KEYS[1], 'c:' .. team, mine + 1)
redis.call('HINCRBY', agg, 'teamclicks:' .. team, 1)
if x == 1 then
  for i = 0, n - 1 do
    for j = i + 1, n - 1 do
      if i == team then redis.call('HINCRBY', agg, 'w:' .. i .. ':' .. j, 1)
      elseif j == team then redis.call('HINCRBY', agg, 'w:' .. j .. ':' .. i, 1)
      else redis.call('HINCRBY', agg, 't:' .. i .. ':' .. j, 1) end
    end
  end
  return 'ok'
end
for j = 0, n - 1 do
  if j ~= team then
    local other = tonumber(redis.call('HGET', KEYS[1], 'c:' .. j) or '0')
    local lo = math.min(team, j)
    local hi = math.max(team, j)
    if mine == other then
      redis.call('HINCRBY', agg, 't:' .. lo .. ':' .. hi, -1)
      redis.call('HINCRBY', agg, 'w:' .. team .. ':' .. j, 1)
    elseif mine + 1 == other then
      redis.call('HINCRBY', agg, 'w:' .. j .. ':' .. team, -1)
      redis.call('HINCRBY', agg, 't:' .. lo .. ':' .. hi, 1)
    end
  end
end
return 'ok'
"""


class EventsUnavailable(RuntimeError):
    """Redis did not take the records: nothing was acknowledged (the caller answers 503 and the client retries)."""


class BacklogFull(RuntimeError):
    def __init__(self, backlog: int, limit: int):
        self.backlog, self.limit = backlog, limit
        super().__init__(f"{backlog} events wait to be aggregated; the limit is {limit}")


def _client(url: str, timeout_s: float, max_connections: int = 16) -> Any:
    import redis.asyncio as aredis

    from connectors.cache import reconnect_once

    pool = aredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout_s,
                                                  socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                  retry=reconnect_once(), health_check_interval=0)
    return aredis.Redis(connection_pool=pool, retry=reconnect_once())


async def ensure_group(client: Any) -> None:
    """The stream and its consumer group, created from the first record if missing (idempotent)."""
    from redis.exceptions import ResponseError

    try:
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def backlog(client: Any) -> int:
    """Records not yet delivered to the consumer group, plus those delivered and not acknowledged."""
    groups = await client.xinfo_groups(STREAM)
    for g in groups:
        name = g.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == GROUP:
            lag = g.get("lag")
            pending = int(g.get("pending") or 0)
            if lag is None:  # Redis cannot tell after a trim; count the whole stream (never less than the truth)
                lag = await client.xlen(STREAM)
            return int(lag) + pending
    return int(await client.xlen(STREAM))


class EventLog:
    """The service's writer: query records (in the search path, batched) and posted events (in the 2xx path)."""

    def __init__(self, url: str, *, timeout_s: float = 1.0, query_timeout_s: float = 0.3, retention: int = 1_000_000,
                 max_backlog: int = 100_000, on_error: Callable[[str, BaseException], None] | None = None,
                 on_write: Callable[[], None] | None = None):
        self.url, self.timeout_s, self.query_timeout_s = url, timeout_s, query_timeout_s
        self.on_write = on_write  # called before each write (the service starts its consumer there)
        self.retention, self.max_backlog = retention, max_backlog
        self.client = _client(url, timeout_s)
        self.on_error = on_error
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._group_ready = False

    async def _ready(self) -> None:
        if self.on_write is not None:
            self.on_write()
        if not self._group_ready:
            await ensure_group(self.client)
            self._group_ready = True

    async def log_query(self, record: dict[str, Any]) -> bool:
        """Append a search's record (batched with the others of this event-loop turn); False when Redis failed
        (the search still answers; events on it will count as orphans)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._pending.append((json.dumps(record, separators=(",", ":"), ensure_ascii=False), fut))
        if len(self._pending) == 1:
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.query_timeout_s * 3)
        except asyncio.TimeoutError:
            return False

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            await self._ready()
            pipe = self.client.pipeline(transaction=False)
            for blob, _ in batch:
                pipe.xadd(STREAM, {"k": "q", "d": blob}, maxlen=self.retention, approximate=True)
            await pipe.execute()
            ok = True
        except Exception as exc:  # fail open: a search never fails for its log
            ok = False
            if self.on_error:
                self.on_error("query_log", exc)
            log.warning("query log write failed: %s: %s", type(exc).__name__, exc)
        for _, fut in batch:
            if not fut.done():
                fut.set_result(ok)

    async def append_events(self, records: list[dict[str, Any]]) -> list[str]:
        """Append events; returns their stream ids once Redis has them. BacklogFull (nothing written) when the
        consumer is too far behind; EventsUnavailable when Redis failed (some may be written: ids dedupe)."""
        try:
            async with asyncio.timeout(self.timeout_s * 3):
                await self._ready()
                waiting = await backlog(self.client)
                if waiting + len(records) > self.max_backlog:
                    raise BacklogFull(waiting, self.max_backlog)
                pipe = self.client.pipeline(transaction=False)
                for r in records:
                    pipe.xadd(STREAM, {"k": "e", "d": json.dumps(r, separators=(",", ":"), ensure_ascii=False)},
                              maxlen=self.retention, approximate=True)
                ids = await pipe.execute()
        except BacklogFull:
            raise
        except Exception as exc:
            self._group_ready = False  # a restarted Redis without AOF lost the group too: recreate it
            if self.on_error:
                self.on_error("events", exc)
            raise EventsUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def backlog(self) -> int:
        await self._ready()
        return await backlog(self.client)

    async def close(self) -> None:
        await close_client(self.client)


async def close_client(client: Any) -> None:
    """Close a client and its pool; a Redis that is already gone must not fail a shutdown."""
    try:
        await client.aclose()
        await client.connection_pool.aclose()
    except Exception:
        pass


@dataclass
class ConsumerStats:
    records: int = 0
    queries: int = 0
    events: int = 0
    orphans: int = 0
    duplicates: int = 0
    unattributed: int = 0
    malformed: int = 0
    replayed: int = 0
    errors: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)


class Consumer:
    """Applies stream records to the aggregates, then acknowledges them (at least once, counted exactly once).

    ``run()`` loops until ``stop()``: its own pending records first (a restart's
    replay), then records idle longer than ``claim_idle_s`` in dead consumers'
    hands, then new ones. A failing Redis is retried with a short backoff.
    """

    def __init__(self, url: str, *, name: str | None = None, batch: int = 500, block_ms: int = 1000,
                 claim_idle_s: float = 30.0, query_ttl_s: int = 7 * 86_400, snapshot_every: int = 50,
                 on_batch: Callable[[ConsumerStats], None] | None = None):
        self.url = url
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch, self.block_ms, self.claim_idle_s = batch, block_ms, claim_idle_s
        self.query_ttl_s, self.snapshot_every = query_ttl_s, snapshot_every
        self.client = _client(url, timeout_s=max(5.0, block_ms / 1000 + 5), max_connections=4)
        self.stats = ConsumerStats()
        self.on_batch = on_batch
        self._stop = asyncio.Event()
        self._query = self.client.register_script(QUERY_SCRIPT)
        self._event = self.client.register_script(EVENT_SCRIPT)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                await ensure_group(self.client)
                await self._drain_own()
                last_claim = 0.0
                while not self._stop.is_set():
                    if time.monotonic() - last_claim > self.claim_idle_s / 2:
                        await self._claim_stale()
                        last_claim = time.monotonic()
                    got = await self.client.xreadgroup(GROUP, self.name, {STREAM: ">"}, count=self.batch,
                                                       block=self.block_ms)
                    for _, entries in got or []:
                        await self.apply(entries)
                    backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarting, a timeout: wait and resume (pending records replay)
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("event consumer %s: %s; retrying in %.1f s", self.name, self.stats.last_error, backoff)
                try:
                    await asyncio.wait_for(self._stop.wait(), backoff)
                except asyncio.TimeoutError:
                    pass
                backoff = min(backoff * 2, 5.0)

    async def _drain_own(self) -> None:
        """Records this consumer name was given but never acknowledged (it crashed): replay them first."""
        start = "0"
        while True:
            got = await self.client.xreadgroup(GROUP, self.name, {STREAM: start}, count=self.batch)
            entries = got[0][1] if got else []
            entries = [e for e in entries if e[1]]  # trimmed ones come back empty
            if not entries:
                return
            self.stats.replayed += len(entries)
            await self.apply(entries)
            start = _id(entries[-1][0])

    async def _claim_stale(self) -> None:
        start = "0-0"
        while True:
            res = await self.client.xautoclaim(STREAM, GROUP, self.name, int(self.claim_idle_s * 1000),
                                               start_id=start, count=self.batch)
            nxt, entries = res[0], res[1]
            entries = [e for e in entries if e[1]]
            if entries:
                self.stats.replayed += len(entries)
                await self.apply(entries)
            if _id(nxt) in ("0-0", "0"):
                return
            start = _id(nxt)

    async def apply(self, entries: list[tuple[Any, dict]]) -> None:
        """Apply one batch (one pipelined round trip of scripts), then acknowledge it."""
        pipe = self.client.pipeline(transaction=False)
        kinds: list[str] = []
        snapshot_keys: list[tuple[str, str] | None] = []
        for _, fields in entries:
            kind, data = _decode(fields)
            if data is None:
                kinds.append("malformed")
                snapshot_keys.append(None)
                continue
            if kind == "q":
                keys, args, skey = self._query_call(data)
                await self._query(keys=keys, args=args, client=pipe)
                snapshot_keys.append(skey)
            else:
                keys, args = self._event_call(data)
                await self._event(keys=keys, args=args, client=pipe)
                snapshot_keys.append(None)
            kinds.append(kind)
        results = await pipe.execute() if len(pipe) else []
        it = iter(results)
        snapshots: set[tuple[str, str]] = set()
        for kind, skey in zip(kinds, snapshot_keys):
            self.stats.records += 1
            if kind == "malformed":
                self.stats.malformed += 1
                continue
            out = next(it)
            out = out.decode() if isinstance(out, bytes) else out
            if kind == "q":
                self.stats.queries += 1
                if skey is not None and isinstance(out, int) and out > 0 and out % self.snapshot_every == 0:
                    snapshots.add(skey)
            else:
                self.stats.events += 1
                if out == "orphan":
                    self.stats.orphans += 1
                elif out == "duplicate":
                    self.stats.duplicates += 1
                elif out == "unattributed":
                    self.stats.unattributed += 1
        for agg, series in snapshots:
            data = await self.client.hgetall(agg)
            snap = {(k.decode() if isinstance(k, bytes) else k): _num(v) for k, v in data.items()}
            snap["at"] = time.time()
            await self.client.rpush(series, json.dumps(snap, separators=(",", ":")))
            await self.client.ltrim(series, -20_000, -1)
            await self.client.expire(series, self.query_ttl_s * 8)
        await self.client.xack(STREAM, GROUP, *[e[0] for e in entries])
        if self.on_batch:
            self.on_batch(self.stats)

    def _query_call(self, d: dict[str, Any]) -> tuple[list[str], list[Any], tuple[str, str] | None]:
        exp = d.get("experiment") or {}
        mode = "none" if not exp or exp.get("forced") else exp.get("mode", "none")
        agg = agg_key(d["index"], exp["id"], exp["fp"]) if mode != "none" else NONE_KEY
        hits = d.get("hits") or []
        teams = d.get("teams") or [-1] * len(hits)
        args: list[Any] = [self.query_ttl_s, mode, exp.get("arm") or "", len(exp.get("arms") or []),
                           "1" if d.get("degraded") else "0", int(d.get("offset") or 0)]
        for doc, team in zip(hits, teams):
            args += [doc, team]
        skey = (agg, series_key(d["index"], exp["id"], exp["fp"])) if mode != "none" else None
        return [QSTATE + d["query_id"], agg], args, skey

    def _event_call(self, d: dict[str, Any]) -> tuple[list[str], list[Any]]:
        attrs = d.get("event_attributes") or {}
        obj = attrs.get("object") or {}
        dwell = attrs.get("dwell_time")
        return ([QSTATE + str(d.get("query_id")), ORPHANS, ORPHAN_SEEN + str(d.get("event_id"))],
                [d.get("event_id"), d.get("action_name"), obj.get("object_id") or "",
                 "" if dwell is None else float(dwell), self.query_ttl_s])

    async def close(self) -> None:
        await close_client(self.client)


def _id(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _decode(fields: dict) -> tuple[str, dict[str, Any] | None]:
    f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    kind = f.get("k")
    kind = kind.decode() if isinstance(kind, bytes) else kind
    try:
        data = json.loads(f.get("d") or b"")
    except (ValueError, TypeError):
        return kind or "?", None
    if not isinstance(data, dict) or kind not in ("q", "e") or not data.get("query_id"):
        return kind or "?", None
    if kind == "q" and (data.get("experiment") or {}) and not {"id", "fp"} <= set(data["experiment"]):
        return kind, None
    return kind, data


def _num(v: Any) -> float | int | str:
    s = v.decode() if isinstance(v, bytes) else str(v)
    try:
        return int(s)
    except ValueError:
        try:
            return float(s)
        except ValueError:
            return s


# ---------------------------------------------------------------- reading back


async def read_aggregates(client: Any, index: str, experiment: str, fingerprint: str) -> dict[str, float | int]:
    data = await client.hgetall(agg_key(index, experiment, fingerprint))
    return {(k.decode() if isinstance(k, bytes) else k): _num(v) for k, v in data.items()}


async def read_series(client: Any, index: str, experiment: str, fingerprint: str) -> list[dict[str, Any]]:
    raw = await client.lrange(series_key(index, experiment, fingerprint), 0, -1)
    return [json.loads(r) for r in raw]


async def read_orphans(client: Any) -> dict[str, int]:
    data = await client.hgetall(ORPHANS)
    return {(k.decode() if isinstance(k, bytes) else k): int(_num(v)) for k, v in data.items()}


async def iterate(client: Any, *, batch: int = 1000, start: str = "-", end: str = "+") -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """Every record in the stream, oldest first: (stream id, "q" or "e", record)."""
    cursor = start
    first = True
    while True:
        got = await client.xrange(STREAM, min=cursor, max=end, count=batch)
        if not first and got:
            got = got[1:]  # the cursor entry was returned last time
        if not got:
            return
        for sid, fields in got:
            kind, data = _decode(fields)
            if data is not None:
                yield _id(sid), kind, data
        cursor = _id(got[-1][0])
        first = False


def connect(url: str, timeout_s: float = 5.0) -> Any:
    """A client for reading aggregates and the stream (the CLI's report and export)."""
    return _client(url, timeout_s)


def chunks(items: Iterable[Any], n: int) -> Iterable[list[Any]]:
    buf: list[Any] = []
    for x in items:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf
