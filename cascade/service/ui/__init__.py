"""The relevance workbench: the page at ``/ui`` and the JSON endpoints it reads and writes (docs/workbench.md).

The page is plain HTML, CSS and JavaScript modules in ``static/``, served from
the package with a Content-Security-Policy of ``'self'`` only: nothing is
fetched from another host at run time. Its endpoints follow the service's
rules (one error shape, strict bodies naming the field at fault):

- ``POST /v1/indexes/{index}/steps``: every step's ranking for one query (moves,
  drops, provenance, per-step scores, features, labels); public like search.
- ``POST /v1/indexes/{index}/compare``: two profiles on one query (overlap,
  Jaccard, RBO, rank differences, nDCG@10 when judged); public like search.
- ``GET|PUT /v1/indexes/{index}/judgments``, ``.../judgments/queries``,
  ``.../judgments/export``, ``POST .../judgments/import``: judgments, saved as a
  qrels file per index (:mod:`cascade.ui.judgments`).
- ``GET /v1/indexes/{index}/evals``: the last ``cascade eval`` of each profile.

Reading judgments and evals is public unless ``CASCADE_PUBLIC_OPS_ENDPOINTS=false``
(then the admin key, like /metrics). Saving judgments writes files on the
server, so it needs the admin key (``X-API-Key``) whenever one is configured,
and without one is accepted only from the service's own machine (loopback).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from cascade.service.errors import ApiError
from cascade.service.ui.access import Access, errors
from cascade.service.ui.judging import Labels, judgments_router, known
from cascade.service.ui.ranking import ranking_router
from cascade.service.ui.schemas import EvalList
from cascade.text import public_value
from cascade.ui.evals import load_last_evals
from cascade.ui.judgments import JudgmentStore, judgments_root

if TYPE_CHECKING:
    from cascade.service.state import ServiceState

STATIC = Path(__file__).parent / "static"
_ASSET = re.compile(r"^[a-z0-9][a-z0-9_.-]*\.(js|css|svg|png|ico|woff2)$")
# Everything the page loads comes from here; no inline script, no other host.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache"}


def ui_router(state: ServiceState) -> APIRouter:
    """The page, its assets and its endpoints (``app.include_router(ui_router(state))``)."""
    router = APIRouter()
    settings = state.settings
    access = Access(settings)
    store = JudgmentStore(judgments_root(settings))
    labels = Labels(store, settings)

    @router.get("/ui", include_in_schema=False)
    @router.get("/ui/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    @router.get("/ui/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        path = STATIC / name
        if not _ASSET.match(name) or not path.is_file():
            raise ApiError(404, "path", f"no workbench asset {name!r}", "not_found")
        media = "text/javascript" if name.endswith(".js") else None
        return FileResponse(path, media_type=media, headers=PAGE_HEADERS)

    @router.get("/v1/indexes/{index}/evals", response_model=EvalList, tags=["workbench"],
                responses=errors(401, 403, 404), summary="The last `cascade eval` of each profile of the index")
    async def evals(index: str, request: Request) -> EvalList:
        access.may_read(request)
        entry = known(state, index)
        found = await asyncio.to_thread(load_last_evals, index, settings)
        return EvalList(index=index, config_version=entry.version, evals=[public_value(e) for e in found])

    router.include_router(ranking_router(state, labels))
    router.include_router(judgments_router(state, access, store, labels))
    return router
