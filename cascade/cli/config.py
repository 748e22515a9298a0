"""`cascade config check` and `cascade config show`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cascade.cli.common import _config_for, _fail, _settings, _setup, console
from cascade.errors import CascadeError

config_app = typer.Typer(no_args_is_help=True, help="Inspect and validate cascade configs.")


def _plan(c) -> str:
    """One line per profile: retrievers → fusion → stages (the default profile unnamed, as before profiles)."""
    steps = lambda prof: " → ".join([*c.retrievers, "fusion", *(s.stage_name for s in prof.stages)])  # noqa: E731
    line = steps(c.profile())
    others = [f"{n}: {steps(c.profile(n))}" for n in c.profile_names() if n != c.default_profile]
    return line + "".join(f"; profile {o}" for o in others)


@config_app.command("check")
def config_check(directory: Optional[Path] = typer.Argument(None, help="Config folder (default: CASCADE_CONFIG_DIR).")) -> None:
    """Validate every NAME.yaml in a folder, as the service does at start-up."""
    _setup()
    from cascade.config import load_config_dir

    try:
        cfgs = load_config_dir(directory or _settings().config_dir)
    except CascadeError as exc:
        _fail(exc)
        return
    for name, c in cfgs.items():
        console.print(f"[green]ok[/] {name} v{c.version}: {_plan(c)}")


@config_app.command("show")
def config_show(index_name: str = typer.Argument(..., help="Index name.")) -> None:
    """Print the effective config of an index (defaults filled in, every profile resolved)."""
    _setup()
    from cascade.config import dump_config

    try:
        console.print(dump_config(_config_for(index_name, None, create=False)), markup=False, highlight=False)
    except CascadeError as exc:
        _fail(exc)


@config_app.command("discover")
def config_discover(
    index: str = typer.Option(..., "--index", help="The index (or alias) in the cluster."),
    host: list[str] = typer.Option(["http://localhost:9200"], "--host", help="Cluster URL (repeatable)."),
    name: Optional[str] = typer.Option(None, help="Cascade index name (default: the cluster index's name)."),
    username: Optional[str] = typer.Option(None, help="Basic-auth user."),
    password_env: Optional[str] = typer.Option(None, help="Environment variable holding the password."),
    api_key_env: Optional[str] = typer.Option(None, help="Environment variable holding an API key."),
    verify_certs: bool = typer.Option(True, "--verify-certs/--no-verify-certs", help="Check the cluster's TLS certificate."),
    out: Optional[Path] = typer.Option(None, help="Config file to write (default: CASCADE_CONFIG_DIR/NAME.yaml)."),
    force: bool = typer.Option(False, help="Overwrite an existing config file."),
) -> None:
    """Write a cascade config for an index that already exists in OpenSearch, from its mapping.

    Text fields become BM25 (and keyword-feature) fields, keyword, number and date fields filterable ones, a
    knn_vector of the embedder's dimension a kNN retriever; the fields left out are listed. Review the file
    (fusion, stages, profiles), then `cascade config check`.
    """
    _setup()
    import asyncio
    import re

    import yaml

    from cascade.config import OpenSearchBackendConfig, parse_config
    from connectors.opensearch.client import Cluster
    from connectors.opensearch.mapping import config_from_mapping

    cname = name or re.sub(r"[^a-z0-9_.-]+", "-", index.lower()).strip("-.") or "index"
    target = out or Path(_settings().config_dir) / f"{cname}.yaml"
    try:
        if target.exists() and not force:
            raise CascadeError(f"{target} exists; --force overwrites it")
        backend = {"hosts": list(host), "index": index}
        for key, value in (("username", username), ("password_env", password_env), ("api_key_env", api_key_env)):
            if value:
                backend[key] = value
        if not verify_certs:
            backend["verify_certs"] = False
        b = OpenSearchBackendConfig(**backend)
        cluster = Cluster(b, str(target))

        async def mapping():
            try:
                return await cluster.call(f"GET {index}/_mapping", lambda c: c.indices.get_mapping(index=index))
            finally:
                await cluster.close()

        data, skipped = config_from_mapping(asyncio.run(mapping()), cname, backend)
        parse_config(_plain(data), str(target))  # what start-up will check, before anything is written
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    note = "".join(f"#   left out: {s}\n" for s in skipped)
    if "knn" in data["retrievers"]:
        note += ("#   the kNN retriever needs embedder.model to embed queries as the index's vectors were made "
                 "(start-up checks the dimension)\n")
    target.write_text(f"# Written by `cascade config discover` from the mapping of {index} at {', '.join(host)}.\n"
                      + note + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    kinds = {}
    for f, spec in data["fields"].items():
        kinds.setdefault(spec["type"], []).append(f)
    console.print(f"wrote [bold]{target}[/]: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds.items())
                  + f"; retrievers: {', '.join(data['retrievers'])}", markup=True, highlight=False)
    for s in skipped:
        console.print(f"  [yellow]left out[/] {s}", highlight=False)


def _plain(data):
    """The config as YAML will hold it (plain types only)."""
    import json

    return json.loads(json.dumps(data))
