"""Popularity and personalized LTR features from behaviour: what users clicked, aggregated from the event stream.

- **popularity** (``features.popularity``): per document, the click-through
  rate smoothed by a Beta prior of ``prior`` impressions around the index-wide
  CTR, all-time and over exponential windows (half-lives), and how often it was
  shown. A document never shown gets the prior: a defined value, not a gap.
- **personal** (``features.personal``): a user's (``user_id``) and a segment's
  (the request's ``user_attributes[segment]``) affinity to the document's value
  of a keyword field: their share of clicks on that value, smoothed toward the
  index-wide share with ``prior`` clicks, and its lift over the index-wide
  share. An unknown user, an anonymous request or a new segment has no clicks:
  the smoothed share is the index-wide share and the lift 0, never an error.

Counts live in Redis (:mod:`connectors.behavior`), kept by
:class:`BehaviorConsumer` (``cascade behavior consume``), which applies the
event stream in order. Counters decay exponentially: a count stored with its
time ``t`` is worth ``x * 2^(-(now - t) / half_life)`` at ``now``, so a window
is one number to update and to read (200 candidates are one ``HMGET``).

Point in time: training must see a feature as it was when the impression was
served, not as it is today (today's counts include the clicks the impression
itself caused). :func:`replay` rebuilds the aggregates from the stream in
memory, with the same code the consumer runs, and hands each logged search
the state it had just before that search: the features it served, up to the
consumer's lag at that moment (a few milliseconds).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping

import numpy as np

from features.config import PersonalFeatures, PopularityFeatures

if TYPE_CHECKING:
    from cascade.candidates import Candidates
    from cascade.query import Query
    from features.context import FeatureContext

log = logging.getLogger(__name__)

ALL = "__all__"  # the index-wide counters, a field of the document hash
TOTAL = "_n"  # an entity's total clicks
GLOBAL = "g"
NO_VALUE = ""  # documents without a value of the field share this one
DAY_S = 86400.0


def epoch(ts: Any) -> float:
    """A record's time (ISO 8601 or epoch milliseconds) in epoch seconds; now when absent."""
    if ts is None:
        return time.time()
    if isinstance(ts, (int, float)):
        return float(ts) / 1000.0
    t = dt.datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


# ---------------------------------------------------------------- decayed counters (encoded as Redis strings)


def _decay(dt_s: float, half_life_days: float | None) -> float:
    return 1.0 if half_life_days is None else 2.0 ** (-max(dt_s, 0.0) / (half_life_days * DAY_S))


def doc_counts(raw: str | None, now: float, half_lives: list[float]) -> np.ndarray:
    """``[impressions, clicks]`` all-time, then per half-life, as of ``now`` (zeros for a document never shown)."""
    out = np.zeros(2 + 2 * len(half_lives))
    if not raw:
        return out
    parts = raw.split(",")
    t = float(parts[0])
    v = np.asarray(parts[1:], dtype=np.float64)[: len(out)]
    out[: len(v)] = v
    for i, h in enumerate(half_lives):
        out[2 + 2 * i: 4 + 2 * i] *= _decay(now - t, h)
    return out


def _doc_matrix(raws: list[str | None], now: float, half_lives: list[float]) -> np.ndarray:
    """:func:`doc_counts` of many documents at once (one parse, one decay per column): the search path's."""
    width = 2 + 2 * len(half_lives)
    out = np.zeros((len(raws), width))
    rows = [i for i, r in enumerate(raws) if r]
    if not rows:
        return out
    try:
        parsed = np.array([raws[i].split(",") for i in rows], dtype=np.float64)  # type: ignore[union-attr]
    except ValueError:  # counters written under another window set: one by one
        for i in rows:
            out[i] = doc_counts(raws[i], now, half_lives)
        return out
    vals = parsed[:, 1: 1 + width]
    out[rows, : vals.shape[1]] = vals
    age = now - parsed[:, 0]
    for j, h in enumerate(half_lives):
        out[rows, 2 + 2 * j: 4 + 2 * j] *= (2.0 ** (-np.maximum(age, 0.0) / (h * DAY_S)))[:, None]
    return out


def doc_add(raw: str | None, t: float, half_lives: list[float], imp: float, clk: float) -> str:
    v = doc_counts(raw, t, half_lives)
    v[0::2] += imp
    v[1::2] += clk
    return f"{t!r}," + ",".join(repr(float(x)) for x in v)


def value_count(raw: str | None, now: float, half_life: float | None) -> float:
    if not raw:
        return 0.0
    t, x = raw.split(",")
    return float(x) * _decay(now - float(t), half_life)


def value_add(raw: str | None, t: float, half_life: float | None, x: float) -> str:
    return f"{t!r},{value_count(raw, t, half_life) + x!r}"


# ---------------------------------------------------------------- features from the counters


def popularity_names(cfg: PopularityFeatures) -> list[str]:
    windows = ["all"] + [f"{h:g}d" for h in cfg.half_lives_days]
    return [f"pop.{w}.{x}" for w in windows for x in ("ctr", "log_impressions")]


PERSONAL_NAMES = ["pers.global.share", "pers.user.affinity", "pers.user.lift", "pers.user.log_clicks",
                  "pers.segment.affinity", "pers.segment.lift", "pers.segment.log_clicks"]
# The evidence about who is asking: 0 for an anonymous request, whatever the document.
WHO = ("pers.user.lift", "pers.user.log_clicks", "pers.segment.lift", "pers.segment.log_clicks")


def additive_groups(names: list[str]) -> list[list[int]] | None:
    """LightGBM interaction constraints that make personalization additive: a tree uses either the features
    about who asks (:data:`WHO`) or the others, never both. The score is then ``f(document) + g(who, value)``;
    for a request with no user and no segment ``g`` is the same for every document, so such a user gets the
    ranking of ``f``, trained on every search. None when the feature set has no personal features."""
    who = [j for j, n in enumerate(names) if n in WHO]
    if not who:
        return None
    return [[j for j in range(len(names)) if j not in who], who]


def popularity_features(raws: list[str | None], index_raw: str | None, now: float,
                        cfg: PopularityFeatures) -> np.ndarray:
    """Per document and window: the Beta-smoothed CTR ``(clicks + prior * mu) / (impressions + prior)`` and
    ``log1p(impressions)``; ``mu`` is the index-wide CTR of the window."""
    hl = cfg.half_lives_days
    totals = doc_counts(index_raw, now, hl)
    mu = np.divide(totals[1::2], totals[0::2], out=np.zeros(len(totals) // 2), where=totals[0::2] > 0)
    counts = _doc_matrix(raws, now, hl)
    imps, clicks = counts[:, 0::2], counts[:, 1::2]
    ctr = (clicks + cfg.prior * mu) / (imps + cfg.prior)
    out = np.empty((len(raws), 2 * len(mu)))
    out[:, 0::2], out[:, 1::2] = ctr, np.log1p(imps)
    return out


def _shares(ent: Mapping[str, str], glob: Mapping[str, str], values: list[str], now: float,
            cfg: PersonalFeatures) -> tuple[float, float, float, float]:
    """(index-wide share, smoothed share, lift, log1p clicks) of an entity for the best of ``values``."""
    h = cfg.half_life_days
    g_total = value_count(glob.get(TOTAL), now, h)
    n_values = max(sum(1 for k in glob if k != TOTAL), 1) + 1
    e_total = value_count(ent.get(TOTAL), now, h)
    best = (0.0, 0.0, -math.inf)
    for v in values:
        g = (value_count(glob.get(v), now, h) + 1.0) / (g_total + n_values)  # Laplace: an unseen value is not 0
        share = (value_count(ent.get(v), now, h) + cfg.prior * g) / (e_total + cfg.prior)
        lift = math.log(share / g)
        if lift > best[2]:
            best = (g, share, lift)
    return best[0], best[1], best[2], math.log1p(e_total)


def personal_features(values: list[list[str]], user: Mapping[str, str] | None, segment: Mapping[str, str] | None,
                      glob: Mapping[str, str], now: float, cfg: PersonalFeatures) -> np.ndarray:
    """Per document: index-wide share of its value, then (affinity, lift, log1p clicks) of the user and of the
    segment. An absent user or segment has no clicks: affinity = index-wide share, lift 0."""
    out = np.zeros((len(values), len(PERSONAL_NAMES)))
    empty: Mapping[str, str] = {}
    cache: dict[tuple[str, ...], tuple[float, ...]] = {}
    for i, vals in enumerate(values):
        key = tuple(vals)
        row = cache.get(key)
        if row is None:
            g, us, ul, un = _shares(user or empty, glob, vals, now, cfg)
            _, ss, sl, sn = _shares(segment or empty, glob, vals, now, cfg)
            row = cache[key] = (g, us, ul, un, ss, sl, sn)
        out[i] = row
    return out


def keyword_values(doc: Mapping[str, Any] | None, field_name: str) -> list[str]:
    v = (doc or {}).get(field_name)
    vals = [str(x) for x in (v if isinstance(v, list) else [v]) if x not in (None, "")]
    return vals or [NO_VALUE]


def entities(user_id: str | None, attributes: Mapping[str, str] | None, cfg: PersonalFeatures | None
             ) -> tuple[str | None, str | None]:
    """The entity keys of a request: ``u:USER`` and ``s:SEGMENT`` (None where absent)."""
    if cfg is None:
        return None, None
    seg = (attributes or {}).get(cfg.segment) if cfg.segment else None
    return (f"u:{user_id}" if user_id else None), (f"s:{seg}" if seg else None)


# ---------------------------------------------------------------- the feature group


@dataclass
class BehaviorSnapshot:
    """What the features of one search read: counters of the candidates, index-wide counters, entity hashes."""

    docs: list[str | None]
    index_doc: str | None
    user: dict[str, str] | None
    segment: dict[str, str] | None
    glob: dict[str, str]
    now: float


class BehaviorGroup:
    """``pop.*`` and ``pers.*`` features from the aggregates in Redis: one round trip per search, overlapping
    the fetch of stored fields (the extractor awaits :meth:`prefetch` beside it)."""

    behavioral = True

    def __init__(self, index: str, popularity: PopularityFeatures | None, personal: PersonalFeatures | None,
                 redis_url: Callable[[], str | None] | None = None):
        self.index, self.pop, self.pers = index, popularity, personal
        self._url = redis_url or _settings_url
        self._warned = False

    def names(self) -> list[str]:
        return (popularity_names(self.pop) if self.pop else []) + (list(PERSONAL_NAMES) if self.pers else [])

    async def prefetch(self, query: "Query", candidates: "Candidates") -> tuple[dict[str, Any], list[tuple]]:
        url = self._url()
        t0 = time.perf_counter()
        if not url:
            return {}, [("behavior_features", 0.0, "no CASCADE_REDIS_URL: behaviour features at their defaults")]
        from connectors.behavior import client_for, read_features

        user, seg = entities(query.user_id, query.user_attributes, self.pers)
        ents = [e for e in (user, seg) if e] + ([GLOBAL] if self.pers else [])
        docs = (list(candidates.ids) + [ALL]) if self.pop else []
        try:
            raw_docs, raw_ents = await read_features(client_for(url), self.index, docs, ents)
        except Exception as exc:  # degrade to defaults; the trace says why
            return {}, [("behavior_features", (time.perf_counter() - t0) * 1e3, f"{type(exc).__name__}: {exc}")]
        got = dict(zip(ents, raw_ents))
        snap = BehaviorSnapshot(raw_docs[:-1] if docs else [], raw_docs[-1] if docs else None,
                                got.get(user) if user else None, got.get(seg) if seg else None,
                                got.get(GLOBAL, {}), time.time())
        return {"behavior": snap}, [("behavior_features", (time.perf_counter() - t0) * 1e3, None)]

    def compute(self, ctx: "FeatureContext") -> np.ndarray:
        snap = ctx.memo.get("behavior")
        n = len(ctx.candidates)
        if snap is None:  # no Redis, or it failed: every document at the defaults
            snap = BehaviorSnapshot([None] * n, None, None, None, {}, time.time())
        return self.from_snapshot(snap, ctx.candidates.fields)

    def from_snapshot(self, snap: BehaviorSnapshot, fields: list[dict[str, Any] | None]) -> np.ndarray:
        """The features of candidates with these stored fields (the live path and :func:`replay` both call it)."""
        n = len(fields)
        blocks = []
        if self.pop:
            blocks.append(popularity_features(snap.docs or [None] * n, snap.index_doc, snap.now, self.pop))
        if self.pers:
            vals = [keyword_values(f, self.pers.field) for f in fields]
            blocks.append(personal_features(vals, snap.user, snap.segment, snap.glob, snap.now, self.pers))
        return np.hstack(blocks) if blocks else np.zeros((n, 0))


def _settings_url() -> str | None:
    from cascade.settings import get_settings

    return get_settings().redis_url


def behavior_group(cfg: Any, settings: Any = None) -> BehaviorGroup | None:
    """The group an index's feature set declares (None: neither popularity nor personal); its Redis is
    ``settings.redis_url`` (default: the process's settings, read at each search)."""
    from cascade.errors import ConfigError

    ft = cfg.features
    if ft is None or not (ft.popularity or ft.personal):
        return None
    if ft.personal is not None:
        f = cfg.fields.get(ft.personal.field)
        if f is None or f.type != "keyword":
            kw = sorted(n for n, x in cfg.fields.items() if x.type == "keyword")
            raise ConfigError(f"{cfg.index}.yaml", "features.personal.field",
                              f"{ft.personal.field!r} is not a keyword field of this index (keyword fields: "
                              f"{', '.join(kw) or 'none'})")
    return BehaviorGroup(cfg.index, ft.popularity, ft.personal,
                         (lambda: settings.redis_url) if settings is not None else None)


# ---------------------------------------------------------------- aggregation (the consumer's and the replay's)


@dataclass
class Aggregates:
    """Counters of one index in memory, as Redis holds them (encoded strings): the consumer loads what a batch
    touches, applies the batch here and writes back what changed; :func:`replay` keeps the whole state."""

    index: str
    half_lives: list[float]
    personal: PersonalFeatures | None
    docs: dict[str, str | None] = field(default_factory=dict)
    entities: dict[str, dict[str, str]] = field(default_factory=dict)
    queries: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: set[str] = field(default_factory=set)
    dirty_docs: set[str] = field(default_factory=set)
    dirty_entities: dict[str, set[str]] = field(default_factory=dict)
    new_queries: set[str] = field(default_factory=set)
    new_events: set[str] = field(default_factory=set)
    applied: dict[str, int] = field(default_factory=lambda: {"searches": 0, "clicks": 0, "duplicates": 0,
                                                             "orphans": 0, "other": 0})

    def _doc(self, doc: str, t: float, imp: float, clk: float) -> None:
        self.docs[doc] = doc_add(self.docs.get(doc), t, self.half_lives, imp, clk)
        self.dirty_docs.add(doc)

    def _value(self, ent: str, key: str, t: float, x: float) -> None:
        h = self.entities.setdefault(ent, {})
        h[key] = value_add(h.get(key), t, self.personal.half_life_days if self.personal else None, x)
        self.dirty_entities.setdefault(ent, set()).add(key)

    def apply(self, kind: str, rec: Mapping[str, Any], values: Mapping[str, list[str]]) -> None:
        """One stream record: a logged search (impressions of what it showed) or a user event (a click)."""
        if kind == "q":
            if rec.get("index") != self.index or not rec.get("query_id"):
                self.applied["other"] += 1
                return
            t = epoch(rec.get("timestamp"))
            hits = [str(h) for h in rec.get("hits") or []]
            for d in hits:
                self._doc(d, t, 1.0, 0.0)
            if hits:
                self._doc(ALL, t, float(len(hits)), 0.0)
            user, seg = entities(rec.get("user_id"), rec.get("user_attributes"), self.personal)
            self.queries[str(rec["query_id"])] = {"u": user, "s": seg, "h": hits, "o": int(rec.get("offset") or 0)}
            self.new_queries.add(str(rec["query_id"]))
            self.applied["searches"] += 1
            return
        if str(rec.get("action_name") or "").lower() != "click":
            return
        q = self.queries.get(str(rec.get("query_id")))
        if q is None:
            self.applied["orphans"] += 1
            return
        eid = str(rec.get("event_id") or "")
        if eid and eid in self.events:
            self.applied["duplicates"] += 1
            return
        if eid:
            self.events.add(eid)
            self.new_events.add(eid)
        attrs = rec.get("event_attributes") or {}
        doc = (attrs.get("object") or {}).get("object_id")
        if doc is None:
            pos = (attrs.get("position") or {}).get("ordinal")
            i = int(pos) - 1 - q["o"] if isinstance(pos, int) else -1
            doc = q["h"][i] if 0 <= i < len(q["h"]) else None
        if doc is None or str(doc) not in q["h"]:
            self.applied["other"] += 1
            return
        doc, t = str(doc), epoch(rec.get("timestamp"))
        self._doc(doc, t, 0.0, 1.0)
        self._doc(ALL, t, 0.0, 1.0)
        self.applied["clicks"] += 1
        if self.personal is None:
            return
        vals = values.get(doc) or [NO_VALUE]
        for ent in [GLOBAL, q["u"], q["s"]]:
            if ent:
                for v in vals:
                    self._value(ent, v, t, 1.0 / len(vals))
                self._value(ent, TOTAL, t, 1.0)

    def snapshot(self, doc_ids: list[str], user: str | None, seg: str | None, now: float) -> BehaviorSnapshot:
        return BehaviorSnapshot([self.docs.get(d) for d in doc_ids], self.docs.get(ALL),
                                self.entities.get(user) if user else None, self.entities.get(seg) if seg else None,
                                self.entities.get(GLOBAL, {}), now)

    def changes(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        docs = {d: self.docs[d] for d in self.dirty_docs if self.docs.get(d) is not None}
        ents = {e: {k: self.entities[e][k] for k in keys} for e, keys in self.dirty_entities.items()}
        return docs, ents  # type: ignore[return-value]


class DocValues:
    """Each document's values of the personal field, fetched from the index (stored fields) and cached."""

    def __init__(self, fetch: Callable[[list[str]], Awaitable[list[dict[str, Any] | None]]] | None,
                 field_name: str | None, cap: int = 200_000):
        self.fetch, self.field, self.cap = fetch, field_name, cap
        self.cache: dict[str, list[str]] = {}

    async def values(self, ids: Iterable[str]) -> dict[str, list[str]]:
        if self.field is None or self.fetch is None:
            return {}
        want = list(dict.fromkeys(i for i in ids if i not in self.cache))
        if want:
            if len(self.cache) + len(want) > self.cap:
                self.cache.clear()
            for d, rec in zip(want, await self.fetch(want)):
                self.cache[d] = keyword_values(rec, self.field)
        return self.cache


def _referenced(batch: list[tuple[str, str, dict[str, Any]]]) -> tuple[set[str], set[str], set[str]]:
    """Documents, query ids (of events) and event ids that a batch of records names."""
    docs, qids, eids = set(), set(), set()
    for _, kind, rec in batch:
        if rec is None:
            continue
        if kind == "q":
            docs.update(str(h) for h in rec.get("hits") or [])
        elif str(rec.get("action_name") or "").lower() == "click":
            qids.add(str(rec.get("query_id")))
            obj = ((rec.get("event_attributes") or {}).get("object") or {}).get("object_id")
            if obj is not None:
                docs.add(str(obj))
            if rec.get("event_id"):
                eids.add(str(rec["event_id"]))
    return docs, qids, eids


class BehaviorConsumer:
    """Applies the event stream to one index's aggregates in Redis, in order, each batch in one transaction."""

    def __init__(self, index: str, url: str, popularity: PopularityFeatures | None,
                 personal: PersonalFeatures | None, values: DocValues, *, batch: int = 500, block_ms: int = 1000,
                 ttl_s: int = 7 * 86_400):
        from connectors.events import _client

        self.index, self.url, self.values = index, url, values
        self.half_lives = list(popularity.half_lives_days) if popularity else []
        self.personal = personal
        self.batch, self.block_ms, self.ttl_s = batch, block_ms, ttl_s
        self.client = _client(url, timeout_s=max(5.0, block_ms / 1000 + 5), max_connections=4)
        self.applied: dict[str, int] = {}
        self.records = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def step(self, block_ms: int | None = None) -> int:
        """Apply the next batch (waiting up to ``block_ms`` for one); the number of records applied."""
        from connectors import behavior as store

        cur = await store.cursor(self.client, self.index)
        batch = await store.records_after(self.client, cur, self.batch, self.block_ms if block_ms is None else block_ms)
        if not batch:
            return 0
        docs, qids, eids = _referenced(batch)
        qids -= {str(rec.get("query_id")) for _, k, rec in batch if k == "q" and rec}
        state = await store.read_state(self.client, self.index, docs | {ALL}, [], qids, eids)
        ents = {GLOBAL} if self.personal else set()
        for q in state["queries"].values():
            ents.update(e for e in (q.get("u"), q.get("s")) if e)
        for _, kind, rec in batch:
            if kind == "q" and rec and self.personal:
                ents.update(e for e in entities(rec.get("user_id"), rec.get("user_attributes"), self.personal) if e)
        if ents:
            state["entities"] = (await store.read_state(self.client, self.index, [], ents, [], []))["entities"]
        agg = Aggregates(self.index, self.half_lives, self.personal, docs=state["docs"],
                         entities=state.get("entities", {}), queries=state["queries"], events=state["events"])
        values = await self.values.values(docs) if self.personal else {}
        for _, kind, rec in batch:
            if rec is not None:
                agg.apply(kind, rec, values)
        changed_docs, changed_ents = agg.changes()
        ok = await store.commit(self.client, self.index, cur, batch[-1][0], changed_docs, changed_ents,
                                {q: agg.queries[q] for q in agg.new_queries}, agg.new_events, self.ttl_s)
        if not ok:  # another consumer moved the cursor: nothing written, reload and go on
            return 0
        self.records += len(batch)
        for k, v in agg.applied.items():
            self.applied[k] = self.applied.get(k, 0) + v
        return len(batch)

    async def drain(self) -> int:
        """Apply everything already in the stream (tests, benchmarks); the number of records applied."""
        total = 0
        while (n := await self.step(block_ms=0)) > 0:
            total += n
        return total

    async def run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                await self.step()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarting: wait and resume from the committed cursor
                log.warning("behaviour consumer %s: %s: %s; retrying in %.1f s", self.index, type(exc).__name__,
                            exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:
            pass


async def replay(records: AsyncIterator[tuple[str, str, dict[str, Any]]], group: BehaviorGroup, values: DocValues,
                 on_search: Callable[[dict[str, Any], Aggregates], Awaitable[None] | None]) -> Aggregates:
    """Rebuild the aggregates from the stream, in order; ``on_search(record, state)`` sees each logged search
    of the index with the state just before it (what the live features read, less the consumer's lag)."""
    agg = Aggregates(group.index, list(group.pop.half_lives_days) if group.pop else [], group.pers)
    pending: list[tuple[str, str, dict[str, Any]]] = []

    async def flush() -> None:
        docs, _, _ = _referenced(pending)
        vals = await values.values(docs) if group.pers else {}
        for _, kind, rec in pending:
            if kind == "q" and rec.get("index") == group.index:
                res = on_search(rec, agg)
                if asyncio.iscoroutine(res):
                    await res
            agg.apply(kind, rec, vals)
        pending.clear()

    async for item in records:
        if item[2] is not None:
            pending.append(item)
        if len(pending) >= 500:
            await flush()
    await flush()
    return agg
