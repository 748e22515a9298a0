"""The search path of the service: validate, look up the cache, compute once, store, answer.

The admission, cache and single-flight steps are :mod:`cascade.service.compute`'s, which the rerank APIs
share; this module holds what is the search's own: its queries, cache keys, budgets and response body.

A cached answer is the response body minus the per-request fields, stored as
JSON bytes; a hit appends ``cache``, ``request_id`` and ``took_ms`` to those
bytes instead of decoding and re-encoding the hits, which is what keeps a hit
within a few milliseconds on loopback.

Cache keys hash everything the ranking depends on: the index, its config
version, the rank profile and its fingerprint (profile config, model stamps,
built index), the normalized query text, the typed filters in a canonical
order, size/from, the overrides and whether the trace was asked for. User and
session ids are not in the key: nothing in a cascade reads them yet.

A latency budget (the request's ``budget_ms``, capped by the index's
``limits.budget_ms``) is not in the key either: an answer in which the budget
shrank or skipped a stage is never stored (like a degraded one), so every
cached answer is the full cascade's, and a budgeted request may be served one
(a hit is well within any budget). Identical budgeted misses share a
computation only with requests under the same budget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable

from cascade.controller import Cascade, SearchResult
from cascade.errors import OverrideError, QueryError, UnknownProfile
from cascade.overrides import canonical
from cascade.query import Query, RangeFilter, TermFilter
from cascade.service.compute import admitted, computed_once
from cascade.service.errors import ApiError, from_query_error
from cascade.service.schemas import RangeSpec, SearchRequest

if TYPE_CHECKING:
    from cascade.service.registry import IndexEntry
    from cascade.service.state import ServiceState

log = logging.getLogger(__name__)


def _check_unicode(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(422, field, "not valid Unicode text (a lone surrogate escape such as \\ud800)", "invalid") from None


def _plain_filters(filters: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in filters.items():
        if isinstance(v, RangeSpec):
            v = v.model_dump(exclude_none=True)
        for s in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else [v]):
            if isinstance(s, str):
                _check_unicode(s, f"filters.{name}")
        out[name] = v
    return out


def _canonical_filters(query: Query) -> list[Any]:
    out = []
    for f in sorted(query.parsed_filters, key=lambda f: f.field):
        if isinstance(f, TermFilter):
            out.append([f.field, f.type, "in", sorted({repr(v) for v in f.values})])
        elif isinstance(f, RangeFilter):
            out.append([f.field, f.type, "range", [repr(x) for x in (f.gt, f.gte, f.lt, f.lte)]])
    return out


def profile_of(entry: IndexEntry, req: SearchRequest) -> Cascade:
    """The cascade of the request's profile (the index's default_profile when it names none), or 422."""
    assert entry.opened is not None
    try:
        return entry.opened.cascade(req.profile)
    except UnknownProfile as exc:
        raise ApiError(422, "profile", f"index {entry.name} has no rank profile {exc.profile!r}; its profiles: "
                                       f"{', '.join(exc.have)}", "unknown_profile") from None


def build_query(entry: IndexEntry, req: SearchRequest, casc: Cascade | None = None) -> Query:
    """The validated query, or ApiError(422) naming the field and the index's limit."""
    lim = entry.config.limits
    _check_unicode(req.query, "query")
    for k, v in req.user_attributes.items():
        _check_unicode(k, "user_attributes")
        _check_unicode(v, f"user_attributes.{k}")
    if len(req.query) > lim.max_query_chars:
        raise ApiError(422, "query", f"query is {len(req.query)} characters; the limit of index {entry.name} is "
                                     f"{lim.max_query_chars}", "too_long", limit=lim.max_query_chars)
    if req.size > lim.max_size:
        raise ApiError(422, "size", f"must be between 1 and {lim.max_size} (limits.max_size of index {entry.name}), "
                                    f"got {req.size}", "too_large", limit=lim.max_size)
    if req.from_ + req.size > lim.max_size:
        raise ApiError(422, "from", f"from + size must be at most {lim.max_size} (limits.max_size of index "
                                    f"{entry.name}), got {req.from_} + {req.size}", "too_large", limit=lim.max_size)
    # Cascade.validate normalizes the text (NFKC, whitespace), as on every other path.
    q = Query(text=req.query, filters=_plain_filters(req.filters), size=req.size, offset=req.from_,
              user_id=req.user_id, session_id=req.session_id, user_attributes=dict(req.user_attributes))
    casc = casc or profile_of(entry, req)
    try:
        q = casc.validate(q)
    except QueryError as exc:
        raise from_query_error(exc) from None
    return q


def result_key(entry: IndexEntry, query: Query, req: SearchRequest, profile: str | None = None,
               personal: bool = False) -> str:
    profile = profile or (entry.opened.default_profile if entry.opened else "default")
    parts = [entry.name, entry.version, profile, entry.fingerprints.get(profile), query.text,
             _canonical_filters(query), query.size, query.offset, canonical(req.overrides), bool(req.explain)]
    if personal:  # behaviour features (popularity, personal) rank per user and segment
        parts += [query.user_id, sorted(query.user_attributes.items())]
    blob = json.dumps(parts, separators=(",", ":"), ensure_ascii=False, default=repr)
    digest = hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()
    return f"cascade:result:{entry.name}:{digest}"


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def dumps(payload: dict[str, Any]) -> bytes:
    """Strict JSON (no NaN/Infinity, which JSON parsers refuse): non-finite numbers become null."""
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_finite(payload), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8", "replace")


def finish(stable: bytes, cache: str, request_id: str, took_ms: float, budget: dict[str, Any] | None = None,
           fields: dict[str, Any] | None = None) -> bytes:
    """The stored body plus this request's fields (the stored part is a JSON object without them): the budget
    report, ``fields`` (the query id and experiment), cache, request id and time."""
    extra = f',"budget":{dumps(budget).decode()}' if budget is not None else ""
    for k, v in (fields or {}).items():
        extra += f',"{k}":{dumps(v).decode() if isinstance(v, dict) else json.dumps(v)}'
    tail = f'{extra},"cache":"{cache}","request_id":{json.dumps(request_id)},"took_ms":{round(took_ms, 3)}}}'
    return stable[:-1] + tail.encode()


@dataclass(frozen=True)
class Budget:
    """The latency budget one search runs under, and where it came from."""

    ms: float
    source: str  # "request" or "index"

    def report(self, result: SearchResult | None = None) -> dict[str, Any]:
        skipped, shrunk = (result.budget_skipped, result.budget_shrunk) if result is not None else ([], {})
        return {"ms": self.ms, "source": self.source, "skipped": skipped, "shrunk": shrunk}


def effective_budget(entry: IndexEntry, req: SearchRequest) -> Budget | None:
    """The tighter of the request's budget_ms and the index's limits.budget_ms (a ceiling a request cannot raise)."""
    mine, ceiling = req.budget_ms, entry.config.limits.budget_ms
    if mine is None:
        return None if ceiling is None else Budget(float(ceiling), "index")
    if ceiling is not None and ceiling < mine:
        return Budget(float(ceiling), "index")
    return Budget(float(mine), "request")


@dataclass
class Computed:
    body: bytes  # the stable part of the response
    degraded: list[str]
    result: SearchResult | None = None

    @property
    def budget_cut(self) -> bool:
        """The budget shrank or skipped a stage: the answer is not the full cascade's."""
        r = self.result
        return r is not None and bool(r.budget_skipped or r.budget_shrunk)


async def compute(state: ServiceState, entry: IndexEntry, view: Cascade, query: Query, explain: bool,
                  budget: Budget | None = None, request_id: str = "") -> Computed:
    """Run the cascade (within the admission limit) and encode the stable part of the response."""
    timeout_s = state.settings.search_timeout_s

    def run(waited_s: float) -> Awaitable[SearchResult]:
        # The budget counts from arrival: what the queue took, the stages cannot have.
        left = max(budget.ms - waited_s * 1e3, 1.0) if budget else None
        return view.search(query, validated=True, budget_ms=left)

    res = await admitted(state, entry, run, deadline_s=min(timeout_s, budget.ms / 1e3) if budget else timeout_s,
                         request_id=request_id)
    payload: dict[str, Any] = {
        "index": entry.name, "profile": view.profile, "config_version": entry.version,
        "hits": res.hits(explain=explain), "total": len(res.candidates), "degraded": res.degraded,
    }
    if explain:
        payload["trace"] = [t.as_dict(top=query.offset + query.size) for t in res.traces]
    return Computed(dumps(payload), res.degraded, res)


async def run_search(state: ServiceState, entry: IndexEntry, req: SearchRequest,
                     request_id: str = "") -> tuple[bytes, str, dict[str, Any] | None]:
    """``(stable body, "hit" | "miss", budget report or None)`` for one request."""
    casc = profile_of(entry, req)
    query = build_query(entry, req, casc)
    budget = effective_budget(entry, req)
    try:
        view = casc.with_overrides(req.overrides)
    except OverrideError as exc:
        raise ApiError(422, exc.field, exc.message, exc.kind, limit=exc.limit) from None
    cfg = entry.config.cache
    personal = casc.computes_features and getattr(casc.features, "behavioral", False)
    key = result_key(entry, query, req, casc.profile, personal) if cfg.enabled else None
    flight_key = key or f"nocache:{id(req)}:{time.monotonic_ns()}"
    if budget is not None:  # share a computation only with requests under the same budget
        flight_key += f":budget={budget.ms!r}"
    timeout_s = state.settings.search_timeout_s
    got = await computed_once(
        state, entry, lambda: compute(state, entry, view, query, req.explain, budget, request_id), key=key,
        ttl_s=cfg.ttl_s, flight_key=flight_key, timeout_s=timeout_s,
        # A degraded or budget-cut answer is not worth repeating for ttl_s (nor to a caller without the budget).
        encode=lambda out: None if out.degraded or out.budget_cut else out.body,
        late=f"index {entry.name}: no answer within {timeout_s:g} s (CASCADE_SEARCH_TIMEOUT_S); the search goes on "
             f"and fills the cache")
    if got.cached is not None:
        return got.cached, "hit", budget.report() if budget else None
    out = got.computed
    assert out is not None
    return out.body, "miss", budget.report(out.result) if budget else None
