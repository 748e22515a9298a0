"""`cascade serve`: every index of a config folder over HTTP (the demo serves its one index through here too)."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Optional

import typer

from cascade.cli.common import _fail, _settings, _setup, err
from cascade.errors import CascadeError


def config_source(index_config: Optional[Path], settings):
    """Where `cascade serve` reads configs: ``--index-config DIR`` strictly (the folder must exist and hold
    configs); by default CASCADE_CONFIG_DIR plus the built-in configs whose embedded index is built, so that
    after `make demo` a plain `cascade serve` serves SciFact even where ./configs does not exist."""
    from cascade.service.registry import ConfigSource

    if index_config is not None:
        return ConfigSource(directory=index_config)
    return ConfigSource(directory=settings.config_dir, builtin_fallback=True, index_dir=settings.index_dir)


def _serve(source, host: Optional[str], port: Optional[int], access_log: bool,
           example_query: str | None = None) -> None:
    """Check the configs like start-up will, say where the service listens and how to call it, then serve."""
    from cascade.service import create_app, serve as run_server

    s = _settings()
    host = host or s.host
    port = s.port if port is None else port
    configs = source.read()  # a bad config stops here with FILE: key: reason, before anything listens
    names = sorted(configs)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if example_query is None:  # the demo's index gets a query it has answers for
        example_query = "does cholesterol cause heart disease" if names[0] == "scifact" else "example query"
    body = json.dumps({"query": example_query, "size": 3, "explain": True})
    err.print(f"serving [bold]{', '.join(names)}[/] at [bold]{url}[/] (cache: "
              f"{'redis ' + s.redis_url if s.redis_url else 'in-process LRU; set CASCADE_REDIS_URL for Redis'}); "
              f"indexes open in the background, {url}/readyz says when they are ready")
    err.print(f"  try: curl -s {url}/v1/indexes/{names[0]}/search -H 'Content-Type: application/json' "
              f"-d {shlex.quote(body)}", markup=False)
    err.print(f"  workbench (every step side by side, compare, judge): {url}/ui", markup=False)
    err.print(f"  API: {url}/docs   metrics: {url}/metrics   stop: Ctrl-C", markup=False)
    logging.getLogger("cascade.service").setLevel(logging.INFO)
    run_server(create_app(s, source), host, port, access_log=access_log, settings=s)


def serve(
    host: Optional[str] = typer.Option(None, help="Address to listen on (default: CASCADE_HOST, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default: CASCADE_PORT, 8080)."),
    index_config: Optional[Path] = typer.Option(
        None, "--index-config", help="Folder of NAME.yaml cascade configs, one index each (default: CASCADE_CONFIG_DIR, "
        "and the built-in configs whose index is built)."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log one line per request."),
) -> None:
    """Serve every index in the config folder over HTTP: search, explain, Redis cache, metrics, reload."""
    _setup()
    try:
        _serve(config_source(index_config, _settings()), host, port, access_log)
    except CascadeError as exc:
        _fail(exc)
