"""cascade as a drop-in rerank server: the APIs that existing rerank clients speak, over a rank profile.

- ``POST /v1/rerank``: Cohere v1, Jina and Voyage (:mod:`.cohere`); ``POST /v2/rerank``: Cohere v2.
- ``POST /rerank``, ``GET /info``, ``GET /health``: text-embeddings-inference (:mod:`.tei`).
- ``POST /score`` (and ``/v1/score``): vLLM (:mod:`.vllm`).

Each is served at the root (some clients join their base URL with an absolute path: haystack's TEI
ranker always posts to ``/rerank``) and, when CASCADE_RERANK_PREFIX is set, under that prefix too. A
request's ``model`` names an index (its default profile), ``INDEX:PROFILE`` or an alias
(CASCADE_RERANK_MODELS); :mod:`.core` runs the profile's stages over the request's documents. The routes
enforce their own body limit (CASCADE_RERANK_MAX_REQUEST_BYTES), so that a too-large body is answered in
the route's own error shape: :func:`own_limit_paths` tells the service's request guard to leave them alone.
:func:`check` runs at start-up: a rerank setting naming a missing or unsuitable profile stops the service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from cascade.service.state import ServiceState
    from cascade.settings import Settings

PATHS = ("/v1/rerank", "/v2/rerank", "/rerank", "/info", "/health", "/score", "/v1/score")


def own_limit_paths(settings: "Settings") -> frozenset[str]:
    """Every path a rerank route answers (root and prefixed): they read bodies under their own limit."""
    prefix = settings.rerank_prefix
    return frozenset(PATHS) | frozenset(prefix + p for p in PATHS if prefix)


def install(app: "FastAPI", state: "ServiceState", settings: "Settings") -> None:
    """Add the rerank routes to ``app``: at the root (in the spec) and under CASCADE_RERANK_PREFIX (not repeated
    in the spec)."""
    from cascade.service.rerank import cohere, tei, vllm
    from cascade.service.rerank.core import Pool
    from cascade.service.rerank.routing import Context, RerankMetrics

    ctx = Context(state, settings, RerankMetrics(state.metrics.registry), Pool(settings))
    routers = [m.router(ctx) for m in (cohere, tei, vllm)]
    for r in routers:
        app.include_router(r)
    if settings.rerank_prefix:
        for r in routers:
            app.include_router(r, prefix=settings.rerank_prefix, include_in_schema=False)


def check(state: "ServiceState") -> None:
    """At start-up, once the configs are read: CASCADE_RERANK_MODELS and CASCADE_RERANK_DEFAULT_MODEL name indexes
    and profiles that can rerank, or start-up fails with a ConfigError naming the setting."""
    from cascade.service.rerank.core import check_models

    check_models(state.settings, {name: entry.config for name, entry in state.registry.entries.items()})
