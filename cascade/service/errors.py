"""Every error the service answers is JSON: ``{"error": {"field", "message", "type", ...}}``.

Callers fix their request from ``field`` and ``message`` alone, so messages
name the limit that was crossed and, for unknown names, the names that exist.
Pydantic's validation errors are rewritten into the same shape (first error
first, with a message about the request, not about pydantic's union branches).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cascade.errors import ConfigError, QueryError
from cascade.text import LONE_SURROGATE, SURROGATE_ESCAPE, lone_surrogate

log = logging.getLogger(__name__)

RANGE_OPS = ("gt", "gte", "lt", "lte")


class ApiError(Exception):
    """An answer other than 200, with the part of the request (or config) at fault."""

    def __init__(self, status: int, field: str | None, message: str, type: str = "invalid", *,
                 limit: int | None = None, file: str | None = None, headers: dict[str, str] | None = None):
        self.status, self.field, self.message, self.type = status, field, message, type
        self.limit, self.file, self.headers = limit, file, headers
        super().__init__(message)

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {"field": self.field, "message": self.message, "type": self.type}
        if self.limit is not None:
            err["limit"] = self.limit
        if self.file is not None:
            err["file"] = self.file
        if request_id:
            err["request_id"] = request_id
        return {"error": err}


def admin_refusal(secret: str | None, key: bytes | str | None) -> ApiError | None:
    """None when ``key`` is the admin key; else the 403 (no key configured) or 401 to answer."""
    if not secret:
        return ApiError(403, "X-API-Key", "admin endpoints are off: set CASCADE_ADMIN_API_KEY", "forbidden")
    given = key.encode("utf-8", "replace") if isinstance(key, str) else key
    if not given or not hmac.compare_digest(given, secret.encode("utf-8")):
        return ApiError(401, "X-API-Key", "missing or wrong API key", "unauthorized",
                        headers={"WWW-Authenticate": "ApiKey"})
    return None


def from_query_error(exc: QueryError) -> ApiError:
    field = "query" if exc.field == "text" else exc.field
    return ApiError(422, field, exc.message, "invalid")


def from_config_error(exc: ConfigError, status: int = 422) -> ApiError:
    return ApiError(status, exc.key or None, str(exc), "config_error", file=exc.file)


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(request: Request, exc: ApiError) -> JSONResponse:
    # The X-Request-ID header itself is added by the request guard, for every response.
    return JSONResponse(exc.body(request_id_of(request)), status_code=exc.status, headers=exc.headers)


def _field_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "path", "query", "header"):
        parts = parts[1:]
    return ".".join(parts) or None


def _filter_message(value: Any) -> str:
    if isinstance(value, dict):
        bad = sorted(k for k in value if k not in RANGE_OPS)
        if bad:
            return f"range filters take {', '.join(RANGE_OPS)}; got {bad}"
        return "range bounds must be numbers or date strings"
    if isinstance(value, list):
        return "a list filter holds strings or numbers (any of them matches)"
    return 'expected a string, a number, a list of them, or a range like {"gte": 2010, "lt": 2020}'


def validation_error(exc: RequestValidationError | list[dict[str, Any]]) -> ApiError:
    """Pydantic's first error as one ApiError naming the field and, where there is one, the limit."""
    errors = list(exc) if isinstance(exc, list) else exc.errors()
    if not errors:
        return ApiError(422, None, "invalid request", "invalid")
    first = errors[0]
    loc = tuple(first.get("loc") or ())
    kind = first.get("type", "invalid")
    ctx = first.get("ctx") or {}
    if kind == "json_invalid":
        return ApiError(422, "body", f"malformed JSON: {ctx.get('error', first.get('msg'))}", "json_invalid")
    if loc == ("body",) and kind in ("missing", "model_attributes_type", "dict_type", "model_type"):
        return ApiError(422, "body", "expected a JSON object (Content-Type: application/json)", kind)
    # Errors inside one filter come once per union branch; say what a filter may be instead.
    if len(loc) >= 3 and loc[:2] == ("body", "filters"):
        return ApiError(422, f"filters.{loc[2]}", _filter_message(first.get("input")), "invalid_filter")
    field = _field_of(loc)
    if field and "." in field and field.split(".")[-1] in ("str", "int", "float", "bool", "list[...]"):
        field = field.rsplit(".", 1)[0]  # drop pydantic's type-branch step
    msg = first.get("msg", "invalid value")
    limit = None
    if kind == "extra_forbidden":
        msg = "unknown key (check the spelling; /openapi.json lists every key)"
    elif kind == "missing":
        msg = "required"
    elif kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        raw = next(iter(ctx.values()), None)
        if isinstance(raw, float) and raw.is_integer():  # a float field's bound (budget_ms: 0.0, 60000.0)
            raw = int(raw)
        limit = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
    elif kind in ("string_too_short", "string_too_long"):
        raw = ctx.get("min_length", ctx.get("max_length"))
        limit = raw if isinstance(raw, int) else None
        if field == "query" and kind == "string_too_short":
            msg, limit = "query text is empty", None
    return ApiError(422, field, msg, kind, limit=limit)


def body_error(exc: ValidationError, raw: bytes) -> ApiError:
    """The error for a request body pydantic refused, naming the field even when the JSON parser could not.

    pydantic's parser refuses a lone surrogate escape (``"\\ud800"``) as malformed
    JSON, which would blame the whole body; Python's parser reads it, so the
    field holding it can be named.
    """
    errs = exc.errors()
    if errs and errs[0].get("type") == "json_invalid" and SURROGATE_ESCAPE.search(raw):
        try:
            field = lone_surrogate(json.loads(raw))
        except (ValueError, RecursionError):
            field = None
        if field:
            return ApiError(422, field, LONE_SURROGATE,
                            "invalid_text")
    return validation_error([{**e, "loc": ("body", *e["loc"])} for e in errs])


async def handle_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, exc)


async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(request, validation_error(exc))


async def handle_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # FastAPI could not read the body (not UTF-8, say): bad JSON like any other
        return error_response(request, ApiError(422, "body", f"malformed JSON: {exc.detail} (expected UTF-8 JSON)",
                                                "json_invalid"))
    field = "path" if exc.status_code == 404 else "method" if exc.status_code == 405 else None
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    err = ApiError(exc.status_code, field, detail, "http_error", headers=dict(exc.headers or {}))
    return error_response(request, err)


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not bad input: logged with its traceback; the caller gets the request id to report."""
    log.error("unhandled error (request %s)", request_id_of(request), exc_info=exc)
    return error_response(request, ApiError(500, None, f"internal error ({type(exc).__name__}); "
                                                       "the request id is in the logs", "internal"))
