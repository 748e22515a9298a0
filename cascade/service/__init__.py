"""The HTTP service (`cascade serve`): per-index cascades behind FastAPI, a result cache, metrics.

``create_app`` builds the ASGI app; ``serve`` runs it with uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from cascade.service.registry import ConfigSource
    from cascade.settings import Settings


def create_app(settings: "Settings | None" = None, source: "ConfigSource | None" = None) -> "FastAPI":
    from cascade.service.app import create_app as _create

    return _create(settings, source)


def serve(app: "FastAPI", host: str, port: int, *, access_log: bool = True, log_level: str = "info") -> None:
    """Run ``app`` until interrupted: one process, an event loop (uvloop and httptools when installed)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level=log_level, timeout_graceful_shutdown=10)
