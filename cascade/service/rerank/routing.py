"""What every rerank route does around the core: read the body under its own size limit, check the route's
optional key, parse the request, answer errors in the route's API's own shape and status.

Statuses follow the APIs' conventions, with 5xx kept for transient faults (an index loading, a timeout, a
model server failing): clients retry 5xx (LlamaIndex's Cohere postprocessor up to 10 times), so a bad
request must never look like one. Overload is 429 (Cohere's and TEI's "too many requests", which these
APIs' clients back off from) where the search API answers 503; both carry Retry-After. The errors
themselves come from one path, :mod:`cascade.service.compute`, shared with the search API.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from cascade.service import errors
from cascade.service.rerank import core
from cascade.service.rerank.core import ErrorKind, Pool, Ranked, RerankCall, RerankError
from cascade.settings import Settings

if TYPE_CHECKING:
    from cascade.service.state import ServiceState

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_DEFAULT_STATUS: dict[ErrorKind, int] = {
    "invalid": 400, "empty": 400, "unknown_model": 404, "unsupported_model": 400, "unauthorized": 401,
    "too_large": 413, "loading": 503, "unavailable": 503, "overloaded": 429, "timeout": 504, "backend": 502,
    "internal": 500}
_TEXT: dict[ErrorKind, str] = {
    "invalid": "invalid request (the message names the field)", "empty": "no query text or no documents",
    "unknown_model": "unknown model (the message lists the valid names)",
    "unsupported_model": "a profile these routes cannot run (it reads index features)",
    "unauthorized": "missing or wrong API key (CASCADE_RERANK_API_KEYS)",
    "too_large": "request body over CASCADE_RERANK_MAX_REQUEST_BYTES (there is no cap on documents)",
    "loading": "index loading", "unavailable": "index unavailable", "overloaded": "overloaded: retry after Retry-After",
    "timeout": "no answer within CASCADE_RERANK_TIMEOUT_S (the same request, sent again, joins the running ranking)",
    "backend": "a model server failed", "internal": "a bug (the request id is in the log)"}


@dataclass(frozen=True)
class Family:
    """One API's error conventions: the status of each error kind, the body it is sent in, and the kinds it
    answers with a bare status (TEI's key check sends no body)."""

    name: str
    body: Callable[[RerankError, int], Any]
    status: dict[str, int] = field(default_factory=dict)
    bare: frozenset[str] = frozenset()

    def status_of(self, err: RerankError) -> int:
        if err.kind in self.status:
            return self.status[err.kind]
        if err.kind == "backend" and err.status:  # the search API's 502 (a refusal) or 503 (no answer)
            return err.status
        return _DEFAULT_STATUS[err.kind]

    def statuses(self, kind: ErrorKind) -> tuple[int, ...]:
        """Every status ``kind`` may be answered with."""
        if kind in self.status:
            return (self.status[kind],)
        return (502, 503) if kind == "backend" else (_DEFAULT_STATUS[kind],)

    def responses(self, model: type[BaseModel], kinds: tuple[ErrorKind, ...] | None = None) -> dict[int | str, Any]:
        """The route's error answers for the OpenAPI spec: each status, what answers it, in which body."""
        at: dict[int, list[ErrorKind]] = {}
        for kind in kinds or tuple(_DEFAULT_STATUS):
            for status in self.statuses(kind):
                at.setdefault(status, []).append(kind)
        out: dict[int | str, Any] = {}
        for status, ks in sorted(at.items()):
            text = "; ".join(_TEXT[k] for k in ks)
            spec: dict[str, Any] = {"description": text[0].upper() + text[1:]}
            if not all(k in self.bare for k in ks):
                spec["model"] = model
            out[status] = spec
        return out


def _cohere(err: RerankError, status: int) -> Any:
    return {"message": err.text}


def _shared_v1(err: RerankError, status: int) -> Any:
    return {"message": err.text, "detail": err.text}


# TEI pairs each error type with one status (Validation 413, Empty 400, Tokenizer 422, Overloaded 429,
# Unhealthy 503, Backend 424); cascade keeps those pairs. A malformed field is 422 (as TEI's JSON parser
# answers it) and so "Tokenizer"; a timeout, which TEI does not have, is 504 "Backend".
_TEI_TYPES: dict[str, str] = {
    "invalid": "Tokenizer", "unknown_model": "Tokenizer", "unsupported_model": "Tokenizer", "empty": "Empty",
    "too_large": "Validation", "loading": "Unhealthy", "unavailable": "Unhealthy", "overloaded": "Overloaded",
    "timeout": "Backend", "backend": "Backend", "internal": "Backend"}


def _tei(err: RerankError, status: int) -> Any:
    return {"error": err.text, "error_type": _TEI_TYPES[err.kind]}


_OPENAI_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 413: "BadRequestError",
                 429: "RateLimitError", 500: "InternalServerError", 502: "InternalServerError",
                 503: "ServiceUnavailableError", 504: "TimeoutError"}


def _openai(err: RerankError, status: int) -> Any:
    return {"error": {"message": err.text, "type": _OPENAI_TYPES.get(status, "BadRequestError"), "param": err.field,
                      "code": status}}


V1 = Family("v1", _shared_v1)  # Cohere v1, Jina, Voyage share POST /v1/rerank
COHERE = Family("cohere", _cohere)
TEI = Family("tei", _tei, {"invalid": 422, "unknown_model": 422, "unsupported_model": 422, "backend": 424,
                           "internal": 424}, bare=frozenset({"unauthorized"}))
VLLM = Family("vllm", _openai)


def body_spec(model: type[BaseModel]) -> dict[str, Any]:
    """The request body in the OpenAPI spec (the route parses it itself, to answer errors in its own shape)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def route_spec(family: Family, request: type[BaseModel], ok: Any, ok_text: str,
               error: type[BaseModel]) -> dict[str, Any]:
    """A POST route's spec: its body, its 200 and every error the family answers."""
    return {"responses": {200: {"model": ok, "description": ok_text}, **family.responses(error)},
            "openapi_extra": body_spec(request)}


def dumps(payload: Any) -> bytes:
    """Strict JSON bytes (no NaN or Infinity, which clients' parsers refuse; scores are finite by then)."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def error_response(family: Family, err: RerankError) -> Response:
    status = family.status_of(err)
    headers = {"Retry-After": err.retry_after} if err.retry_after else {}
    if err.kind == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    if err.kind in family.bare:
        return Response(status_code=status, headers=headers)
    return Response(dumps(family.body(err, status)), status_code=status, headers=headers,
                    media_type="application/json")


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or ""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or ``too_large`` once it passes ``limit`` bytes (CASCADE_RERANK_MAX_REQUEST_BYTES)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RerankError("too_large", "body", f"request body is {int(length)} bytes; the limit is {limit} "
                                               f"(CASCADE_RERANK_MAX_REQUEST_BYTES); there is no cap on documents")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RerankError("too_large", "body", f"request body is over the limit of {limit} bytes "
                                                   f"(CASCADE_RERANK_MAX_REQUEST_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def check_key(request: Request, settings: Settings, route: str) -> None:
    """The route's key (CASCADE_RERANK_API_KEYS: by route, or "*"), when one is set: as ``Authorization: Bearer
    KEY`` (Cohere, Jina, Voyage, haystack), a bare ``Authorization: KEY`` (LlamaIndex's TEI) or ``X-API-Key``."""
    keys = settings.rerank_api_keys
    secret = keys.get(route) or keys.get("*")
    if secret is None:
        return
    want = secret.get_secret_value().encode()
    auth = request.headers.get("authorization", "")
    given = [auth.removeprefix("Bearer ").removeprefix("bearer ").strip(), auth.strip(),
             request.headers.get("x-api-key", "")]
    if not any(g and hmac.compare_digest(g.encode("utf-8", "replace"), want) for g in given):
        raise RerankError("unauthorized", "Authorization", f"missing or wrong API key for {route} "
                                                           f"(send Authorization: Bearer KEY)")


def parse(model: type[M], raw: bytes) -> M:
    """The request body as ``model``, or ``invalid`` naming the field as the search API does."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = errors.body_error(exc, raw)
        raise RerankError("invalid", err.field, err.message) from None


def ranked_headers(r: Ranked) -> dict[str, str]:
    """What every successful answer says beside its body: the model, truncation, the cache, degraded stages and
    the time the ranking took in the service (``Server-Timing``)."""
    h = {"X-Cascade-Model": r.model, "X-Cascade-Truncated": str(r.truncated), "X-Cascade-Cache": r.cache,
         "Server-Timing": f"rerank;dur={r.took_ms:.1f}"}
    if r.degraded:
        h["X-Cascade-Degraded"] = ",".join(r.degraded)
    return h


class RerankMetrics:
    """Requests and latency of the rerank routes, in the service's own registry (beside the search series)."""

    def __init__(self, registry: Any):
        from prometheus_client import Counter, Histogram

        from cascade.service.metrics import LATENCY_BUCKETS

        self.requests = Counter("cascade_rerank_requests", "Rerank API requests by API, model, status and cache.",
                                ["api", "model", "status", "cache"], registry=registry)
        self.seconds = Histogram("cascade_rerank_seconds", "Rerank API request latency in the service.",
                                 ["api", "cache"], buckets=LATENCY_BUCKETS, registry=registry)


@dataclass(frozen=True)
class Context:
    """What every rerank route works with: the service, its settings, the routes' metrics and admission pool."""

    state: ServiceState
    settings: Settings
    metrics: RerankMetrics
    pool: Pool


async def answer(request: Request, family: Family, route: str, ctx: Context,
                 handle: Callable[[bytes], Awaitable[Response]]) -> Response:
    """Run one request through the shared steps; ``handle`` turns the raw body into the route's answer."""
    t0 = time.perf_counter()
    try:
        check_key(request, ctx.settings, route)
        raw = await read_body(request, ctx.settings.rerank_max_request_bytes)
        resp = await handle(raw)
    except RerankError as err:
        resp = error_response(family, err)
    except Exception as exc:  # a bug: logged with the request id, answered in the route's shape
        rid = request_id(request)
        log.error("rerank route %s failed (request %s)", route, rid, exc_info=exc)
        resp = error_response(family, RerankError("internal", None, f"internal error ({type(exc).__name__}); "
                                                                    f"request {rid} is in the service log"))
    cache = resp.headers.get("x-cascade-cache", "none")
    model = resp.headers.get("x-cascade-model", "(none)")  # a served model's name, never a caller's typo
    ctx.metrics.requests.labels(family.name, model, str(resp.status_code), cache).inc()
    ctx.metrics.seconds.labels(family.name, cache).observe(time.perf_counter() - t0)
    return resp


def rerank_route(r: APIRouter, ctx: Context, path: str, summary: str, family: Family, request: type[M], ok: Any,
                 ok_text: str, error: type[BaseModel], call: Callable[[M], RerankCall],
                 payload: Callable[[M, Ranked, str], Any]) -> None:
    """Add ``POST path`` to ``r``: the body parsed as ``request``, ``call(body)`` ranked by the core, the answer
    ``payload(body, ranked, request id)`` with the ranking's headers; errors in ``family``'s shape. An API
    module gives only its two translations."""
    async def route(req: Request) -> Response:
        async def handle(raw: bytes) -> Response:
            body = parse(request, raw)
            rid = request_id(req)
            ranked = await core.rerank(ctx.state, ctx.pool, call(body), rid)
            return Response(dumps(payload(body, ranked, rid)), headers=ranked_headers(ranked),
                            media_type="application/json")

        return await answer(req, family, path, ctx, handle)

    r.add_api_route(path, route, methods=["POST"], summary=summary, **route_spec(family, request, ok, ok_text, error))
