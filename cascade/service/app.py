"""The HTTP API: FastAPI routes over :class:`ServiceState`, with a fast path for search.

Routes stay thin: they look the index up, hand the request to the search path
and turn its bytes into a response. Search requests are answered by the ASGI
guard in front of FastAPI, from the raw body to the response bytes (cached or
freshly encoded), because on a cache hit FastAPI's routing, parameter solving
and response classes would cost more than the rest of the request. The FastAPI
route shares the handler and declares ``response_model`` and the request body,
so /openapi.json describes exactly what is served.
"""

import inspect
import json
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cascade.service import errors, rerank
from cascade.service.errors import ApiError, admin_refusal
from cascade.service.registry import ConfigSource, IndexEntry
from cascade.service.schemas import (
    CacheInfo, CascadeInfo, ErrorResponse, Health, IndexInfo, IndexList, IndexReadiness, ProfileInfo, Readiness,
    ReloadResponse, SearchRequest, SearchResponse, StepBounds,
)
from cascade.experiments.events import EventBatch
from cascade.service.experiments import Experiments, experiments_router
from cascade.service.search import finish
from cascade.service.state import ServiceState
from cascade.service.ui import ui_router
from cascade.settings import Settings, get_settings
from cascade.text import public_value

_RID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Unreadable request (an invalid Content-Length)", 401: "Missing or wrong API key", 403: "Admin endpoints are off",
            404: "Unknown index (the message lists the indexes)", 413: "Request body too large",
            422: "Invalid request: error.field names the part, error.message the rule or limit",
            502: "The search backend refused the request", 503: "Index loading or unavailable, or overloaded",
            504: "No answer within the search timeout"}
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


SearchHandler = Callable[[str, bytes, str, "str | None"], Awaitable[tuple[int, bytes, dict[str, str]]]]
# Operations endpoints: public by default (scrapers, API explorers); CASCADE_PUBLIC_OPS_ENDPOINTS=false puts
# them behind the admin key. /healthz and /readyz stay open for load balancers; they name no files.
OPS_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def public_config(value: Any) -> Any:
    """A config dump as public answers show it: model and file paths cut to their last part (public_reason)."""
    return public_value(value)


_SEARCH_PATH = re.compile(r"^/v1/indexes/([^/]+)/search$")


class RequestGuard:
    """Pure ASGI (no per-request task): a request id for every request, a cap on body size, and the search fast path.

    ``POST /v1/indexes/{index}/search`` is answered here, straight from the
    body bytes, rather than through FastAPI's routing, dependency solving and
    response classes: on a cache hit those cost more than everything else the
    service does. The FastAPI route with the same handler stays for the spec
    (and answers if this guard is left out).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, search: SearchHandler | None = None,
                 ops_key: str | None = None, ops_protected: bool = False, own_limit: frozenset[str] = frozenset()):
        self.app, self.max_bytes, self.search = app, max_bytes, search
        self.ops_key, self.ops_protected = ops_key, ops_protected
        self.own_limit = own_limit  # paths that cap their bodies themselves (the rerank APIs: their own error shape)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        length = None
        key = None
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                s = v.decode("latin-1")
                rid = s if _RID.match(s) else None
            elif k == b"content-length":
                length = v
            elif k == b"x-api-key":
                key = v.decode("latin-1")
        rid = rid or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())
        max_bytes = self.max_bytes

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        if scope["path"] in self.own_limit:
            await self.app(scope, receive, send_with_id)
            return
        if length is not None and (not length.isdigit() or int(length) > max_bytes):
            too_big = length.isdigit()
            err = ApiError(413 if too_big else 400, "body",
                           f"request body is {int(length)} bytes; the limit is {max_bytes} (CASCADE_MAX_REQUEST_BYTES)"
                           if too_big else "invalid Content-Length header", "too_large" if too_big else "invalid",
                           limit=max_bytes if too_big else None)
            await JSONResponse(err.body(rid), status_code=err.status)(scope, receive, send_with_id)
            return
        if self.ops_protected and scope["path"] in OPS_PATHS:
            refusal = admin_refusal(self.ops_key, dict(scope["headers"]).get(b"x-api-key"))
            if refusal is not None:
                await JSONResponse(refusal.body(rid), status_code=refusal.status,
                                   headers=refusal.headers)(scope, receive, send_with_id)
                return
        if self.search is not None and scope["method"] == "POST":
            m = _SEARCH_PATH.match(scope["path"])
            if m is not None:
                await self._fast_search(m.group(1), rid, key, receive, send_with_id)
                return
        seen = 0

        async def receive_capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise StarletteHTTPException(413, f"request body is over the limit of {max_bytes} bytes "
                                                      f"(CASCADE_MAX_REQUEST_BYTES)")
            return message

        await self.app(scope, receive_capped, send_with_id)

    async def _fast_search(self, index: str, rid: str, key: str | None, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                err = ApiError(413, "body", f"request body is over the limit of {self.max_bytes} bytes "
                                            f"(CASCADE_MAX_REQUEST_BYTES)", "too_large", limit=self.max_bytes)
                status, body, headers = 413, json.dumps(err.body(rid)).encode(), {}
                break
            chunks.append(chunk)
            if not message.get("more_body", False):
                assert self.search is not None
                try:
                    status, body, headers = await self.search(index, b"".join(chunks), rid, key)
                except Exception as exc:  # a bug: logged, answered like the app's own handler would
                    errors.log.error("unhandled error (request %s)", rid, exc_info=exc)
                    err = ApiError(500, None, f"internal error ({type(exc).__name__}); the request id is in the logs",
                                   "internal")
                    status, body, headers = 500, json.dumps(err.body(rid)).encode(), {}
                break
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None, source: ConfigSource | None = None) -> FastAPI:
    """The service for every config in ``source`` (default: CASCADE_CONFIG_DIR)."""
    settings = settings or get_settings()
    source = source or ConfigSource(directory=settings.config_dir)
    state = ServiceState(settings, source)
    state.experiments = Experiments(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            rerank.check(state)  # a CASCADE_RERANK_* setting naming no usable profile fails start-up
            yield
        finally:
            await state.stop()

    from cascade import __version__

    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:
        # Metrics are Prometheus (/metrics); FastAPI's per-request OpenTelemetry checks cost a hit ~10% for nothing.
        extra["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(
        title="cascade", version=__version__, lifespan=lifespan, **extra,
        description="Search with declared ranking cascades: BM25 and kNN candidates, fusion, re-ranking stages. "
                    "Errors are JSON: {\"error\": {\"field\", \"message\", \"type\"}}.",
    )
    app.state.service = state
    app.add_exception_handler(ApiError, errors.handle_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, errors.handle_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, errors.handle_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, errors.handle_unexpected)

    async def answer_search(index: str, raw: bytes, request_id: str,
                            api_key: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        """(status, JSON body, extra headers) for one search request: the whole route, errors included."""
        t0 = time.perf_counter()
        m = state.metrics
        label = index if index in state.registry.entries else "(unknown)"  # never a label per random name
        try:
            try:
                body = SearchRequest.model_validate_json(raw)
            except ValidationError as exc:
                raise errors.body_error(exc, raw) from None
            entry = state.entry(index)
            assigned = state.experiments.assign(entry, body, request_id, api_key)
            profile = ("+".join(assigned.arms) if assigned.arm is None else assigned.arm) if assigned else \
                body.profile or (entry.opened.default_profile if entry.opened else "default")
            stable, cache, budget, extra = await state.experiments.search(entry, body, request_id, assigned)
        except ApiError as exc:
            m.child(m.requests, label, "(none)", str(exc.status), "none").inc()
            return exc.status, json.dumps(exc.body(request_id)).encode(), exc.headers or {}
        took = (time.perf_counter() - t0) * 1e3
        m.child(m.requests, index, profile, "200", cache).inc()
        m.child(m.request_seconds, index, cache).observe(took / 1e3)
        return 200, finish(stable, cache, request_id, took, budget, extra), {}

    secret = settings.admin_api_key.get_secret_value() if settings.admin_api_key else ""
    app.add_middleware(RequestGuard, max_bytes=settings.max_request_bytes, search=answer_search,
                       ops_key=secret, ops_protected=not settings.public_ops_endpoints,
                       own_limit=rerank.own_limit_paths(settings))

    api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="CASCADE_ADMIN_API_KEY")

    def require_admin(key: Annotated[str | None, Depends(api_key)]) -> None:
        refusal = admin_refusal(secret, key)
        if refusal is not None:
            raise refusal

    def info(e: IndexEntry) -> IndexInfo:
        c = e.config
        return IndexInfo(name=e.name, version=c.version, description=c.description, status=e.status, error=e.error,
                         backend=c.backend.type, steps=[*c.retrievers, "fusion", *(s.stage_name for s in c.stages)],
                         profiles=c.profile_names(), default_profile=c.default_profile,
                         cache=CacheInfo(enabled=c.cache.enabled, ttl_s=c.cache.ttl_s, pair_scores=c.cache.pair_scores))

    @app.post("/v1/indexes/{index}/search", response_model=SearchResponse, tags=["search"],
              responses=_errors(400, 401, 403, 404, 413, 422, 502, 503, 504),
              openapi_extra={
                  "parameters": [{"name": "index", "in": "path", "required": True, "schema": {"type": "string"},
                                  "description": "An index name, as GET /v1/indexes lists them."}],
                  "requestBody": {"required": True, "content": {
                      "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}}}}},
              summary="Rank documents for a query through the index's cascade")
    async def search(request: Request) -> Response:
        # Normally answered by RequestGuard's fast path; the same handler here keeps the route complete.
        rid = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        status, body, headers = await answer_search(request.path_params["index"], await request.body(), rid,
                                                    request.headers.get("x-api-key"))
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    @app.get("/v1/indexes", response_model=IndexList, tags=["indexes"], summary="The indexes this service answers for")
    async def list_indexes() -> IndexList:
        reg = state.registry
        return IndexList(generation=reg.generation, indexes=[info(reg.entries[n]) for n in reg.names()])

    @app.get("/v1/indexes/{index}/cascade", response_model=CascadeInfo, tags=["indexes"], responses=_errors(404),
             summary="The effective config and every rank profile as built")
    async def describe(index: str) -> CascadeInfo:
        e = state.registry.entries.get(index)
        if e is None:
            state.entry(index)  # raises the 404 naming the indexes
            raise AssertionError("unreachable")
        casc = e.cascade
        profiles = {
            n: ProfileInfo(fingerprint=e.fingerprints.get(n), plan=p.plan(),
                           overrides={k: StepBounds(**v) for k, v in p.bounds().items()})
            for n, p in (e.opened.profiles.items() if e.opened is not None else [])
        }
        return CascadeInfo(
            index=e.name, version=e.version, status=e.status, error=e.error, fingerprint=e.fingerprint,
            config=public_config(e.config.model_dump(mode="json")), default_profile=e.config.default_profile,
            plan=casc.plan() if casc else None,
            overrides={k: StepBounds(**v) for k, v in casc.bounds().items()} if casc else {},
            profiles=profiles,
        )

    @app.post("/v1/admin/reload", response_model=ReloadResponse, tags=["admin"], responses=_errors(401, 403, 422),
              dependencies=[Depends(require_admin)],
              summary="Re-read configs and models; swap all cascades at once, or keep the running ones")
    async def reload() -> ReloadResponse:
        reg = await state.reload()
        return ReloadResponse(generation=reg.generation, indexes=[info(reg.entries[n]) for n in reg.names()])

    @app.get("/healthz", response_model=Health, tags=["ops"], summary="The process is up")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, tags=["ops"], responses={503: {"model": Readiness}},
             summary="Every index opened, its models loaded and warmed up")
    async def readyz() -> JSONResponse:
        reg = state.registry
        body = Readiness(status=reg.status, cache=state.cache.status(),
                         indexes={n: IndexReadiness(status=e.status, error=e.error) for n, e in reg.entries.items()})
        return JSONResponse(body.model_dump(), status_code=200 if reg.status == "ready" else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    def openapi() -> dict[str, Any]:
        """FastAPI's spec plus the search body, which the route parses itself (so FastAPI does not list it)."""
        if app.openapi_schema is None:
            spec = FastAPI.openapi(app)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (SearchRequest, EventBatch):  # bodies the routes parse themselves
                req = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in req.pop("$defs", {}).items():
                    schemas.setdefault(name, sub)
                schemas[model.__name__] = req
        return app.openapi_schema

    app.include_router(experiments_router(state))
    app.include_router(ui_router(state))  # the relevance workbench at /ui and its endpoints (docs/workbench.md)
    app.openapi = openapi  # type: ignore[method-assign]
    rerank.install(app, state, settings)  # Cohere, Jina, Voyage, TEI and vLLM rerank APIs (docs/rerank.md)
    return app
