"""The HTTP service (`cascade serve`): per-index cascades behind FastAPI, a result cache, metrics.

``create_app`` builds the ASGI app; ``serve`` runs it with uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from cascade.service.registry import ConfigSource
    from cascade.settings import Settings


def create_app(settings: "Settings | None" = None, source: "ConfigSource | None" = None) -> "FastAPI":
    from cascade.service.app import create_app as _create

    return _create(settings, source)


def server_config(app: "FastAPI", host: str, port: int, settings: "Settings", *, access_log: bool = True,
                  log_level: str = "info") -> "uvicorn.Config":
    """uvicorn's config for ``app``: the one `cascade serve` runs and every HTTP test serves with.

    The HTTP protocol is httptools with the connection limits uvicorn lacks (``CASCADE_HTTP_*``, see
    :mod:`cascade.service.protocol`); the lifespan is required ("on"), since the app opens its indexes
    there and must not serve without them.
    """
    import importlib.util

    import uvicorn

    from cascade.service.protocol import protocol_class

    return uvicorn.Config(
        app, host=host, port=port, http=protocol_class(settings),
        loop="uvloop" if importlib.util.find_spec("uvloop") is not None else "auto",
        timeout_keep_alive=settings.http_keepalive_s,  # type: ignore[arg-type]  # a float works (call_later)
        timeout_graceful_shutdown=10, lifespan="on", access_log=access_log, log_level=log_level,
    )


def serve(app: "FastAPI", host: str, port: int, *, access_log: bool = True, log_level: str = "info",
          settings: "Settings | None" = None) -> None:
    """Run ``app`` until interrupted: one process, an event loop (uvloop when installed), httptools with limits.

    ``settings`` (default: the process's) gives the connection limits. Exits with uvicorn's start-up
    failure status (3) when the server did not start, as ``uvicorn.run`` does.
    """
    import uvicorn

    from cascade.settings import get_settings

    server = uvicorn.Server(server_config(app, host, port, settings or get_settings(), access_log=access_log,
                                          log_level=log_level))
    try:
        server.run()
    except KeyboardInterrupt:  # pragma: no cover - uvicorn handles the signal; a second Ctrl-C lands here
        pass
    if not server.started:
        raise SystemExit(3)
