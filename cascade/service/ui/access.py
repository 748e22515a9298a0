"""Who may read and who may write the workbench's judgments and evaluations.

Ranking a query (steps, compare) is public like search. Reading judgments and
evaluations follows ``CASCADE_PUBLIC_OPS_ENDPOINTS`` (false: the admin key, like
/metrics). Saving judgments writes files on the server, so it needs the admin key
(``X-API-Key``) whenever one is configured; without one it is accepted only from
the service's own machine, and only from the workbench's own page (:func:`cross_site`).
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request

from cascade.service.errors import ApiError, admin_refusal
from cascade.service.schemas import ErrorResponse
from cascade.settings import Settings


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route: each status answered with the service's one error shape."""
    return {c: {"model": ErrorResponse} for c in codes}


def loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cross_site(request: Request) -> str | None:
    """Why a keyless write may come from another web site through the user's own browser, or None.

    Without an admin key a write is accepted from this machine only, and a browser on this machine is
    this machine: any page it shows could post a judgments file here (a text/plain POST needs no CORS
    preflight). So the write must name this machine as its Host (a rebound DNS name does not) and, when a
    browser says where the request comes from (Origin, Sec-Fetch-Site), come from this service's own page.
    """
    host = request.headers.get("host", "")
    if not loopback(urlsplit(f"//{host}").hostname):
        return f"the request is addressed to {host!r}, not to this machine"
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{host}":
        return f"it comes from the web page of {origin!r}"
    if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return "it comes from another web site"
    return None


class Access:
    """The checks, as the routes call them first: each raises the service's 401 or 403 naming the field."""

    def __init__(self, settings: Settings):
        self.public_reads = settings.public_ops_endpoints
        self.secret = settings.admin_api_key.get_secret_value() if settings.admin_api_key else ""

    def may_read(self, request: Request) -> None:
        if not self.public_reads:
            refusal = admin_refusal(self.secret, request.headers.get("x-api-key"))
            if refusal is not None:
                raise refusal

    def may_write(self, request: Request) -> None:
        if self.secret:
            refusal = admin_refusal(self.secret, request.headers.get("x-api-key"))
            if refusal is not None:
                refusal.message = f"saving judgments needs the admin key: {refusal.message}"
                raise refusal
            return
        if not loopback(request.client.host if request.client else None):
            raise ApiError(403, "X-API-Key", "saving judgments from another machine needs CASCADE_ADMIN_API_KEY "
                                             "set on the service (and sent as X-API-Key)", "forbidden")
        why = cross_site(request)
        if why is not None:
            raise ApiError(403, "Origin", f"refused to save judgments: {why} (the workbench's own page at /ui, "
                                          "or a client with X-API-Key once CASCADE_ADMIN_API_KEY is set, may)",
                           "forbidden")
