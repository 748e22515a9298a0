"""text-embeddings-inference: ``POST /rerank``, ``GET /info`` and ``GET /health``.

TEI answers a top-level array of ``{index, score, text?}`` sorted by score, with every text; so does this
route (scores strictly decreasing, ties broken at the 12th digit, so a client that re-sorts keeps the order).
Where TEI fails a whole request for one over-long text (without ``truncate``) or more than 32 texts,
cascade truncates (from the end, or from the start with ``truncation_direction: Left``), counts it in
``X-Cascade-Truncated`` and has no document cap (CASCADE_RERANK_MAX_REQUEST_BYTES bounds the body). Scores
are a (0, 1) relevance unless ``raw_scores`` asks for the profile's own score. Errors keep TEI's pairs of
type and status (:data:`.routing.TEI`); a missing key is TEI's bare 401.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cascade.service.rerank import core
from cascade.service.rerank.core import Ranked, RerankCall, RerankError, descending, number, relevance
from cascade.service.rerank.routing import TEI, Context, check_key, dumps, error_response, rerank_route
from cascade.service.rerank.schemas import TEIError, TEIInfo, TEIRank, TEIRerankRequest
from cascade.service.rerank.truncation import pair_encoder


def tei_answer(body: TEIRerankRequest, ranked: Ranked, rid: str) -> list[dict[str, Any]]:
    """TEI's array: every text by score, strictly decreasing."""
    scores = descending([number(ranked.scores[i]) if body.raw_scores else relevance(ranked.scores[i])
                         for i in ranked.order])
    return [{"index": i, "score": s, **({"text": body.texts[i]} if body.return_text else {})}
            for i, s in zip(ranked.order, scores)]


def router(ctx: Context) -> APIRouter:
    """``POST /rerank``, ``GET /info`` and ``GET /health`` over ``ctx``'s service."""
    r = APIRouter(tags=["rerank"])
    rerank_route(r, ctx, "/rerank", "Rerank texts: text-embeddings-inference clients", TEI, TEIRerankRequest,
                 list[TEIRank], "Every text, by score; X-Cascade-Truncated counts truncated texts", TEIError,
                 lambda b: RerankCall(b.model, b.query, b.texts, where="texts",
                                      truncate_left=b.truncation_direction.lower() == "left"), tei_answer)

    @r.get("/info", summary="The default model, as text-embeddings-inference describes itself",
           responses={200: {"model": TEIInfo}, **TEI.responses(TEIError, ("unauthorized",))})
    async def tei_info(request: Request) -> Response:
        try:
            check_key(request, ctx.settings, "/rerank")
            return Response(dumps(info(ctx)), media_type="application/json")
        except RerankError as err:
            return error_response(TEI, err)

    @r.get("/health", summary="200 when a request without a model can rerank (text-embeddings-inference)",
           response_class=Response,
           responses={200: {"description": "Healthy (an empty body)"},
                      503: {"model": TEIError, "description": "Unhealthy: the default model is loading, unavailable, "
                                                              "unset or names a profile that cannot rerank"}})
    async def tei_health() -> Response:
        # TEI clients send no model: healthy means the default one would answer. Any reason it would not (no
        # single default, an unknown or refused one, an index loading or down) is TEI's 503 Unhealthy.
        try:
            core.resolve(ctx.state, None)
        except RerankError as err:
            return error_response(TEI, RerankError("unavailable", None, err.text, retry_after=err.retry_after))
        return Response(status_code=200)

    return r


def info(ctx: Context) -> dict[str, Any]:
    """TEI's ``/info`` for the default model (what clients read: the model, its input limit, batch sizes)."""
    from cascade import __version__

    state, settings = ctx.state, ctx.settings
    name = core.default_model(state)
    max_length, dtype = 512, "float32"
    casc = None
    if name is not None:
        try:
            _, casc = core.resolve(state, name)
        except RerankError:
            casc = None
    if casc is not None:
        enc = next((e for e in (pair_encoder(s) for s in casc.stages) if e is not None), None)
        if enc is not None:
            max_length = enc.max_length
        scorer = next((getattr(s, "scorer", None) for s in casc.stages), None)
        dtype = getattr(scorer, "dtype", None) or dtype
    return TEIInfo(
        model_id=name or "cascade (set CASCADE_RERANK_DEFAULT_MODEL; requests may name a model)", model_sha=None,
        model_dtype=str(dtype), model_type={"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
        max_concurrent_requests=settings.rerank_max_concurrent + settings.rerank_max_queued,
        max_input_length=max_length, max_batch_tokens=max_length * 1024, max_batch_requests=None,
        # No document cap: the body limit is the only one (the shortest text, `"",`, takes 3 bytes).
        max_client_batch_size=settings.rerank_max_request_bytes // 3, auto_truncate=True, tokenization_workers=1,
        version=__version__, sha=None, docker_label=None,
    ).model_dump()
