"""One query through a profile with every step's whole ranking kept: what the workbench's columns show.

Search's ``explain`` lists each step's top ``from + size`` and the features of
the hits it returns; a workbench needs more: each step's whole ranking (to say
that a document came up from rank 37), and the features of documents a stage
dropped (to see why LTR let a relevant one go). So this runs the profile's own
cascade (the object search runs: :meth:`Cascade.candidates` then
:meth:`Cascade.run_stages`, the two halves of :meth:`Cascade.search`) and keeps
the candidate set as the stages received it. It goes through the service's
admission limit like a search, but is never cached, counted in search metrics,
or logged to experiments: looking at a query must not change what is measured.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

import numpy as np

from cascade.candidates import Candidates
from cascade.controller import Cascade, Retrieved, StageTrace
from cascade.errors import AllRetrieversFailed, CascadeError, OverrideError, QueryError
from cascade.query import Query
from cascade.service.concurrency import Overloaded
from cascade.service.errors import ApiError, from_query_error
from cascade.service.schemas import SearchRequest
from cascade.service.search import build_query, effective_budget, profile_of
from cascade.text import public_reason

if TYPE_CHECKING:
    from cascade.service.registry import IndexEntry
    from cascade.service.state import ServiceState

log = logging.getLogger(__name__)

MAX_FIELD_CHARS = 2000  # longer stored values are cut for display


@dataclass
class Run:
    """What one profile did with one query: the candidates the stages received (features for all of them),
    the final candidates, every step's trace (whole rankings) and the time."""

    cascade: Cascade
    query: Query
    received: Candidates
    final: Candidates
    traces: list[StageTrace]
    took_ms: float

    @property
    def degraded(self) -> list[str]:
        return [t.name for t in self.traces if t.error]


def search_request(entry: IndexEntry, body: Any, profile: str | None, size: int, field: str = "depth") -> SearchRequest:
    """The search request the workbench's request amounts to (so every check is search's own), with ``size``
    checked against the index's limits.max_size under the workbench's own field name."""
    lim = entry.config.limits.max_size
    if size > lim:
        raise ApiError(422, field, f"must be between 1 and {lim} (limits.max_size of index {entry.name}), got {size}",
                       "too_large", limit=lim)
    return SearchRequest(query=body.query, filters=body.filters, size=size, profile=profile,
                         overrides=getattr(body, "overrides", {}) or {}, budget_ms=getattr(body, "budget_ms", None))


@asynccontextmanager
async def holding(state: ServiceState, entry: IndexEntry) -> AsyncIterator[None]:
    """Keep ``entry`` open for the block: a reload retires an index only once no request holds it, and a
    workbench request reads it after its search too (stored fields, documents to judge)."""
    entry.active += 1
    try:
        yield
    finally:
        state.release(entry)


@asynccontextmanager
async def admitted(state: ServiceState, entry: IndexEntry, deadline_s: float,
                   request_id: str = "") -> AsyncIterator[float]:
    """A slot of the searches' admission pool for the block (the seconds waited for it), and the cascade's
    errors answered as search answers them: the workbench is one more way of searching, not a way around
    the service's limits. (Search's own ``admitted`` also counts the request in the search metrics, which
    looking at a query must not.)"""
    try:
        async with state.admission.slot(deadline_s) as waited_s:
            yield waited_s
    except Overloaded as exc:
        raise ApiError(503, None, f"overloaded: {exc}", "overloaded", headers={"Retry-After": exc.retry_after}) from None
    except QueryError as exc:
        raise from_query_error(exc) from None
    except AllRetrieversFailed as exc:
        log.error("index %s: every retriever failed (workbench, request %s): %s", entry.name, request_id, exc)
        raise ApiError(503, None, f"index {entry.name}: every retriever failed; the search backend is not "
                                  f"answering (request {request_id} in the service log)", "search_failed") from None
    except CascadeError as exc:
        status = 502 if getattr(exc, "status", None) else 503
        raise ApiError(status, None, f"index {entry.name}: {public_reason(str(exc))}", "backend_error") from None


async def run_profile(state: ServiceState, entry: IndexEntry, req: SearchRequest, request_id: str = "",
                      retrieved: Retrieved | None = None) -> Run:
    """Run ``req``'s profile on ``req``'s query within the admission limit; errors as search answers them.
    The caller holds ``entry`` (:func:`holding`). ``retrieved``: the retrievers' hits, when several
    profiles of the index share them (:func:`retrieve_once`)."""
    casc = profile_of(entry, req)
    query = build_query(entry, req, casc)
    try:
        view = casc.with_overrides(req.overrides)
    except OverrideError as exc:
        raise ApiError(422, exc.field, exc.message, exc.kind, limit=exc.limit) from None
    budget = effective_budget(entry, req)
    timeout_s = state.settings.search_timeout_s
    async with admitted(state, entry, min(timeout_s, budget.ms / 1e3) if budget else timeout_s,
                        request_id) as waited_s:
        t0 = time.perf_counter()
        if retrieved is not None:
            t0 -= retrieved.ms / 1e3
        deadline = None if budget is None else time.monotonic() + max(budget.ms - waited_s * 1e3, 1.0) / 1e3
        received, traces = await view.candidates(query, t0, retrieved=retrieved)
        final = await view.run_stages(query, received, traces, t0=t0, deadline=deadline)
        took = (time.perf_counter() - t0) * 1e3
    return Run(view, query, received, final, traces, took)


async def retrieve_once(state: ServiceState, entry: IndexEntry, req: SearchRequest, request_id: str = "") -> Retrieved:
    """The retrievers' hits for ``req``'s query (what several profiles of the index then share, so that they
    rank the same candidates). The caller holds ``entry``."""
    casc = profile_of(entry, req)
    query = build_query(entry, req, casc)
    async with admitted(state, entry, state.settings.search_timeout_s, request_id):
        return await casc.retrieve(query)


def _f(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return round(x, 6) if np.isfinite(x) else None


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + "…"
    if isinstance(value, list):
        return [_short(v) for v in value[:50]]
    if isinstance(value, dict):
        return {k: _short(v) for k, v in list(value.items())[:50]}
    return value


async def fetch_fields(casc: Cascade, ids: Sequence[str], known: dict[str, dict[str, Any] | None]) -> dict[str, dict]:
    """Stored fields of ``ids`` (those not already in ``known``), cut for display."""
    missing = [i for i in ids if known.get(i) is None]
    if missing and casc.documents is not None:
        for i, doc in zip(missing, await casc.documents.fetch(missing)):
            known[i] = doc
    return {i: {k: _short(v) for k, v in (known.get(i) or {}).items()} for i in ids}


def _window(trace: StageTrace, stage: Any) -> int:
    """How many of its incoming candidates a stage scored (the rest kept the previous order below them)."""
    if trace.error or trace.early_exit or trace.budget_cut == "skipped":
        return 0
    if trace.budget_cut == "shrunk" and trace.cost_unit != "calls":
        return trace.scored
    rerank = getattr(stage, "rerank", None)
    return min(trace.n_in, rerank or trace.n_in)


def columns(run: Run, depth: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Every step as a column: its top ``depth`` with moves since the previous ranking step, what left the top,
    and the step's counts, time and cost; and every listed document id, in order of first appearance."""
    stages = {s.name: s for s in run.cascade.stages}
    final_scores = {i: k for k, i in enumerate(run.final.ids)}
    listed: dict[str, None] = {}
    out: list[dict[str, Any]] = []
    previous: StageTrace | None = None
    for t in run.traces:
        col: dict[str, Any] = {
            "name": t.name, "kind": t.kind, "ranked": t.kind != "features", "previous": None, "n_in": t.n_in,
            "n_out": t.n_out, "scored": t.scored, "cost_unit": t.cost_unit, "usage": dict(t.usage) or None,
            "ms": round(t.ms, 3), "elapsed_ms": round(t.elapsed_ms, 3), "error": t.error, "note": t.note,
            "early_exit": dict(t.early_exit) if t.early_exit else None, "total": len(t.ids), "hits": [],
            "dropped": [],
        }
        out.append(col)
        if t.kind == "features":
            continue
        is_stage = t.kind not in ("retriever", "fusion")
        before = previous if is_stage else None
        prev_rank = {d: r for r, d in enumerate(before.ids, start=1)} if before else {}
        window = _window(t, stages.get(t.name)) if is_stage else None
        own = run.final.stage_scores.get(t.name) if is_stage else None
        col["previous"] = before.name if before else None
        for r, (d, s) in enumerate(zip(t.ids[:depth], t.scores[:depth]), start=1):
            pr = prev_rank.get(d)
            if not is_stage:
                scored = True
            elif d in final_scores and own is not None:
                scored = bool(np.isfinite(own[final_scores[d]]))
            else:
                scored = pr is not None and pr <= (window or 0)
            col["hits"].append({"id": d, "rank": r, "score": _f(s), "previous_rank": pr,
                                "move": None if pr is None else pr - r,
                                "new": before is not None and (pr is None or pr > depth), "scored": scored})
            listed.setdefault(d)
        if before is not None:
            here = {d: r for r, d in enumerate(t.ids, start=1)}
            for r0, d in enumerate(before.ids[:depth], start=1):
                r1 = here.get(d)
                if r1 is None or r1 > depth:
                    col["dropped"].append({"id": d, "previous_rank": r0, "rank": r1})
                    listed.setdefault(d)
        if t.kind == "fusion" or is_stage:
            previous = t
    return out, list(listed)


def documents(run: Run, ids: Sequence[str], fields: dict[str, dict], labels: Any) -> dict[str, dict[str, Any]]:
    """Per listed document: its fields, retriever provenance, rank and score at every step, own stage scores,
    features (all fused candidates have them when the profile computes features) and its relevance label."""
    ranked = [t for t in run.traces if t.kind != "features"]
    positions = {t.name: {d: i for i, d in enumerate(t.ids)} for t in ranked}
    rec = run.received
    rec_row = {d: i for i, d in enumerate(rec.ids)}
    fin_row = {d: i for i, d in enumerate(run.final.ids)}
    out: dict[str, dict[str, Any]] = {}
    for d in ids:
        retrievers, steps = {}, {}
        for t in ranked:
            i = positions[t.name].get(d)
            if i is None:
                continue
            steps[t.name] = {"rank": i + 1, "score": _f(t.scores[i])}
            if t.kind == "retriever":
                retrievers[t.name] = {"score": _f(t.scores[i]) or 0.0, "rank": i + 1}
        features = None
        if rec.features is not None and d in rec_row:
            features = {n: _f(v) for n, v in zip(rec.feature_names, rec.features[rec_row[d]])}
        stages = None
        if d in fin_row and run.final.stage_scores:
            stages = {k: _f(v[fin_row[d]]) for k, v in run.final.stage_scores.items()}
        out[d] = {"fields": fields.get(d, {}), "retrievers": retrievers, "steps": steps, "stages": stages,
                  "features": features, "label": labels.labels.get(d), "label_source": labels.sources.get(d)}
    return out
