"""The workbench's ranking endpoints: every step of one profile on one query (``steps``), and two profiles
on one query (``compare``). Public like search, and through its admission limit (:mod:`.run`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from cascade.service.errors import ApiError, request_id_of
from cascade.service.search import profile_of
from cascade.service.ui.access import errors
from cascade.service.ui.judging import Labels
from cascade.service.ui.run import (
    Run, columns, documents, fetch_fields, holding, retrieve_once, run_profile, search_request,
)
from cascade.service.ui.schemas import (
    RBO_P, CompareDoc, CompareRequest, CompareResponse, CompareRow, CompareSide, RankedId, StepsRequest,
    StepsResponse,
)
from cascade.ui.overlap import jaccard_at, judged_at, ndcg_at_10, overlap_at, rbo

if TYPE_CHECKING:
    from cascade.service.state import ServiceState


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def ranking_router(state: ServiceState, labels: Labels) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/indexes/{index}/steps", response_model=StepsResponse, tags=["workbench"],
                 responses=errors(404, 413, 422, 502, 503),
                 summary="Every step's ranking for one query: moves, drops, provenance, scores, features, labels")
    async def steps(index: str, body: StepsRequest, request: Request) -> StepsResponse:
        entry = state.entry(index)
        req = search_request(entry, body, body.profile, body.depth)
        async with holding(state, entry):  # the stored fields are read after the search
            run = await run_profile(state, entry, req, request_id_of(request) or "")
            cols, ids = columns(run, body.depth)
            have = {d: f for d, f in zip(run.received.ids, run.received.fields) if f is not None}
            fields = await fetch_fields(run.cascade, ids, have)
        lab = await labels.of(index, body.query)
        return StepsResponse(
            index=entry.name, profile=run.cascade.profile, query=run.query.text, config_version=entry.version,
            took_ms=round(run.took_ms, 3), depth=body.depth, degraded=run.degraded, steps=cols,
            docs=documents(run, ids, fields, lab), judgments=labels.summary(lab))

    @router.post("/v1/indexes/{index}/compare", response_model=CompareResponse, tags=["workbench"],
                 responses=errors(404, 413, 422, 502, 503),
                 summary="Two rank profiles on one query: overlap, Jaccard and RBO at k, rank differences, nDCG@10")
    async def compare(index: str, body: CompareRequest, request: Request) -> CompareResponse:
        entry = state.entry(index)
        if body.k > body.depth:
            raise ApiError(422, "k", f"k ({body.k}) must be at most depth ({body.depth})", "invalid")
        rid = request_id_of(request) or ""
        req_a = search_request(entry, body, body.a, body.depth)
        req_b = search_request(entry, body, body.b, body.depth)
        ca, cb = profile_of(entry, req_a), profile_of(entry, req_b)
        async with holding(state, entry):
            shared = await retrieve_once(state, entry, req_a, rid) if ca.retrievers is cb.retrievers else None
            ra = await run_profile(state, entry, req_a, rid, retrieved=shared)
            rb = await run_profile(state, entry, req_b, rid, retrieved=shared)
            a_ids, b_ids = list(ra.final.ids), list(rb.final.ids)
            listed = list(dict.fromkeys([*a_ids[:body.depth], *b_ids[:body.depth]]))
            have = {d: f for run in (ra, rb) for d, f in zip(run.final.ids, run.final.fields) if f is not None}
            fields = await fetch_fields(ra.cascade, listed, have)
        lab = await labels.of(index, body.query)
        pos_a = {d: r for r, d in enumerate(a_ids, start=1)}
        pos_b = {d: r for r, d in enumerate(b_ids, start=1)}

        def side(run: Run, ids: list[str]) -> CompareSide:
            scores = run.final.score
            return CompareSide(
                profile=run.cascade.profile, took_ms=round(run.took_ms, 3), total=len(ids),
                hits=[RankedId(id=d, rank=r, score=round(float(scores[r - 1]), 6) if _finite(scores[r - 1]) else None)
                      for r, d in enumerate(ids[:body.depth], start=1)],
                ndcg_10=ndcg_at_10(ids, lab.labels), judged_10=judged_at(ids, lab.labels), degraded=run.degraded)

        rows = [CompareRow(id=d, rank_a=pos_a.get(d), rank_b=pos_b.get(d), label=lab.labels.get(d),
                           diff=pos_a[d] - pos_b[d] if d in pos_a and d in pos_b else None) for d in listed]
        rows.sort(key=lambda r: min(r.rank_a or 10**9, r.rank_b or 10**9))
        k = body.k
        return CompareResponse(
            index=entry.name, query=ra.query.text, k=k, overlap=overlap_at(a_ids, b_ids, k),
            jaccard=round(jaccard_at(a_ids, b_ids, k), 6), rbo=round(rbo(a_ids, b_ids, RBO_P, depth=k), 6),
            rbo_p=RBO_P, a=side(ra, a_ids), b=side(rb, b_ids), rows=rows,
            docs={d: CompareDoc(fields=fields.get(d, {}), label=lab.labels.get(d), label_source=lab.sources.get(d))
                  for d in listed},
            judgments=labels.summary(lab))

    return router
