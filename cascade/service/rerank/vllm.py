"""vLLM's ``POST /score`` (and ``/v1/score``): scores of (query, document) pairs, in the order given.

``text_1``/``text_2`` (or ``queries``/``documents``): one query and one or many documents, or two lists of
one length scored pairwise (a list of one query is paired with every document). Pairwise lists with
several queries are ranked once per distinct query, so each document's score is the profile's over the
documents sent with the same query, as in a rerank call. Those rankings run side by side (no more at once
than the rerank pool runs), under one deadline for the whole request (CASCADE_RERANK_TIMEOUT_S); the first
to fail cancels the others' waits, and its error names the pair (``text_1.3``, ``documents.7``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cascade.service.rerank import core
from cascade.service.rerank.core import Ranked, RerankCall, RerankError, descending, relevance
from cascade.service.rerank.routing import VLLM, Context, answer, dumps, parse, ranked_headers, request_id, route_spec
from cascade.service.rerank.schemas import ScoreError, ScoreRequest, ScoreResponse


def pairs(body: ScoreRequest) -> tuple[str, str, list[str], list[str], bool]:
    """(name of the query key, of the document key, query per pair, document per pair, whether the queries
    were a list of more than one, so that an error about one names its position)."""
    if body.truncate_prompt_tokens is not None:
        raise RerankError("invalid", "truncate_prompt_tokens", "not supported: vLLM keeps the last N tokens of the "
                                                               "whole prompt; cascade cuts each document (never the "
                                                               "query) to what the model reads and counts it in "
                                                               "X-Cascade-Truncated; leave it out")
    if body.text_1 is not None or body.text_2 is not None:
        k1, k2, a, b = "text_1", "text_2", body.text_1, body.text_2
    else:
        k1, k2, a, b = "queries", "documents", body.queries, body.documents
    if a is None:
        raise RerankError("invalid", k1, "required (text_1 and text_2, or queries and documents)")
    if b is None:
        raise RerankError("invalid", k2, "required")
    qs = [a] if isinstance(a, str) else list(a)
    ds = [b] if isinstance(b, str) else list(b)
    if not qs:
        raise RerankError("empty", k1, "must hold at least one text")
    if not ds:
        raise RerankError("empty", k2, "must hold at least one text")
    pairwise = len(qs) > 1
    if len(qs) == 1:
        qs = qs * len(ds)
    elif len(qs) != len(ds):
        raise RerankError("invalid", k2, f"holds {len(ds)} texts and {k1} {len(qs)}: give one {k1} text, or as "
                                         f"many as {k2} (scored pairwise)")
    return k1, k2, qs, ds, pairwise


async def score_pairs(ctx: Context, body: ScoreRequest, rid: str) -> tuple[list[float], Ranked]:
    """The relevance of every pair, in the order given, and the rankings merged (for the headers)."""
    k1, k2, qs, ds, pairwise = pairs(body)
    groups: dict[str, list[int]] = {}
    for j, q in enumerate(qs):
        groups.setdefault(q, []).append(j)
    # Many distinct queries take turns for the pool's slots instead of all queueing (or being turned away).
    gate = asyncio.Semaphore(ctx.settings.rerank_max_concurrent)

    async def one(q: str, rows: list[int]) -> Ranked:
        call = RerankCall(body.model, q, [ds[j] for j in rows], where=k2, positions=rows,
                          query_key=f"{k1}.{rows[0]}" if pairwise else k1)
        async with gate:
            return await core.rerank(ctx.state, ctx.pool, call, rid)

    timeout_s = ctx.settings.rerank_timeout_s
    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tg:  # a failure cancels the others' waits
            tasks = [tg.create_task(one(q, rows)) for q, rows in groups.items()]
    except TimeoutError:
        raise RerankError("timeout", None, f"no answer within {timeout_s:g} s (CASCADE_RERANK_TIMEOUT_S) for the "
                                           f"{len(groups)} queries of this request; the rankings go on: the same "
                                           f"request, sent again, waits for them instead of starting over") from None
    except ExceptionGroup as group:
        first = next((e for e in group.exceptions if isinstance(e, RerankError)), None)
        if first is None:
            raise
        raise first from None
    answers = [t.result() for t in tasks]
    scores = [0.0] * len(ds)
    for rows, got in zip(groups.values(), answers):
        # Strictly decreasing in each query's rank (ties broken), then put back in the order given.
        ranked = descending([relevance(got.scores[k]) for k in got.order])
        for k, s in zip(got.order, ranked):
            scores[rows[k]] = s
    first = answers[0]
    merged = Ranked(first.model, [], [], sum(a.truncated for a in answers), sum(a.tokens for a in answers),
                    sorted({d for a in answers for d in a.degraded}),
                    "hit" if all(a.cache == "hit" for a in answers) else "miss", max(a.took_ms for a in answers))
    return scores, merged


def router(ctx: Context) -> APIRouter:
    """``POST /score`` and ``POST /v1/score`` over ``ctx``'s service."""
    r = APIRouter(tags=["rerank"])

    async def score(request: Request) -> Response:
        async def handle(raw: bytes) -> Response:
            rid = request_id(request)
            scores, merged = await score_pairs(ctx, parse(ScoreRequest, raw), rid)
            payload: dict[str, Any] = {
                "id": f"score-{rid}", "object": "list", "created": int(time.time()), "model": merged.model,
                "data": [{"index": j, "object": "score", "score": s} for j, s in enumerate(scores)],
                "usage": {"prompt_tokens": merged.tokens, "total_tokens": merged.tokens, "completion_tokens": 0,
                          "prompt_tokens_details": None},
            }
            return Response(dumps(payload), headers=ranked_headers(merged), media_type="application/json")

        return await answer(request, VLLM, "/score", ctx, handle)

    spec = route_spec(VLLM, ScoreRequest, ScoreResponse, "One score per pair, in the order given", ScoreError)
    r.add_api_route("/score", score, methods=["POST"], summary="Score (query, document) pairs: vLLM clients", **spec)
    r.add_api_route("/v1/score", score, methods=["POST"], summary="The same as POST /score (vLLM serves both)",
                    **spec)
    return r
