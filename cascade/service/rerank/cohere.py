"""``POST /v1/rerank`` (Cohere v1, Jina and Voyage, which share the path and nearly the shape) and
``POST /v2/rerank`` (Cohere v2).

One /v1 answer serves all three client families: ``results`` (Cohere and Jina read it; documents echoed
as objects, every key as sent), ``data`` (Voyage reads it; documents as strings), ``usage`` and ``meta``;
errors carry both ``message`` (Cohere) and ``detail`` (Jina's and Voyage's FastAPI-style clients).
Relevance scores are the profile's final score through the logistic function: in (0, 1) as these APIs
document, strictly decreasing in rank (ties broken at the 12th digit, so a client that sorts by score keeps
cascade's order), and never cast to an integer (OpenSearch's post-processor reads ``relevance_score`` as a
Double).
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter

from cascade.service.rerank.core import Ranked, RerankCall, descending, relevance
from cascade.service.rerank.routing import COHERE, V1, Context, rerank_route
from cascade.service.rerank.schemas import (
    CohereError, SharedV1Error, V1RerankRequest, V1RerankResponse, V2RerankRequest, V2RerankResponse,
)


def echo(doc: Any) -> dict[str, Any]:
    """A request document as Cohere and Jina echo it: an object (a string becomes ``{"text": ...}``)."""
    return {"text": doc} if isinstance(doc, str) else dict(doc)


def plain(doc: Any) -> str:
    """A request document as Voyage echoes it: its text."""
    if isinstance(doc, str):
        return doc
    text = doc.get("text")
    if isinstance(text, str):
        return text
    return " ".join(str(v) for v in doc.values() if isinstance(v, (str, int, float)) and not isinstance(v, bool))


def search_units(n: int) -> int:
    return max(1, math.ceil(n / 100))  # Cohere bills one search unit per 100 documents


def ranked_scores(ranked: Ranked, top: int | None) -> list[tuple[int, float]]:
    """(document position, relevance) of the best ``top`` (all by default), strictly decreasing."""
    order = ranked.order[: top or len(ranked.order)]
    return list(zip(order, descending([relevance(ranked.scores[i]) for i in order])))


def meta(ranked: Ranked, version: str, n: int) -> dict[str, Any]:
    """Cohere's ``meta`` of an answer: the API version, billed units (one per 100 documents, as Cohere bills),
    the tokens the models read, ``warnings`` (truncated documents, failed stages: Cohere's own place for what
    a caller should know) and, not Cohere's, whether the cache answered."""
    return {"api_version": {"version": version}, "billed_units": {"search_units": search_units(n)},
            "tokens": {"input_tokens": ranked.tokens, "output_tokens": 0}, "warnings": ranked.warnings,
            "cache": ranked.cache}


def v1_answer(body: V1RerankRequest, ranked: Ranked, rid: str) -> dict[str, Any]:
    """One answer for Cohere v1, Jina (``results``) and Voyage (``data``) clients."""
    voyage = bool({"truncation", "top_k"} & body.model_fields_set)
    with_docs = body.return_documents if body.return_documents is not None else not voyage
    results, data = [], []
    for i, score in ranked_scores(ranked, body.top_n or body.top_k):
        results.append({"index": i, "relevance_score": score,
                        **({"document": echo(body.documents[i])} if with_docs else {})})
        data.append({"index": i, "relevance_score": score,
                     **({"document": plain(body.documents[i])} if with_docs else {})})
    return {"id": rid, "results": results, "data": data, "model": ranked.model, "object": "list",
            "usage": {"total_tokens": ranked.tokens}, "meta": meta(ranked, "1", len(body.documents))}


def v2_answer(body: V2RerankRequest, ranked: Ranked, rid: str) -> dict[str, Any]:
    """Cohere v2's answer."""
    results = [{"index": i, "relevance_score": score,
                **({"document": echo(body.documents[i])} if body.return_documents else {})}
               for i, score in ranked_scores(ranked, body.top_n)]
    return {"id": rid, "results": results, "meta": meta(ranked, "2", len(body.documents))}


def router(ctx: Context) -> APIRouter:
    """``POST /v1/rerank`` and ``POST /v2/rerank`` over ``ctx``'s service."""
    r = APIRouter(tags=["rerank"])
    rerank_route(r, ctx, "/v1/rerank", "Rerank documents: Cohere v1, Jina and Voyage clients", V1, V1RerankRequest,
                 V1RerankResponse, "Every document, best first (top_n/top_k cut); X-Cascade-Truncated counts "
                 "truncated documents", SharedV1Error,
                 lambda b: RerankCall(b.model, b.query, b.documents, b.rank_fields), v1_answer)
    rerank_route(r, ctx, "/v2/rerank", "Rerank documents: Cohere v2 clients", COHERE, V2RerankRequest,
                 V2RerankResponse, "Every document, best first (top_n cut); meta.warnings says how many were "
                 "truncated", CohereError,
                 lambda b: RerankCall(b.model, b.query, b.documents, b.rank_fields, b.max_tokens_per_doc), v2_answer)
    return r
