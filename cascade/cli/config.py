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
