"""What every command shares: consoles, logging set-up, errors, progress bars, settings, configs and datasets."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cascade.errors import CascadeError

console = Console()
err = Console(stderr=True, soft_wrap=True)  # messages carry paths: never wrap them


def _setup() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)])
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for noisy in ("sentence_transformers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fail(exc: Exception) -> None:
    # Messages quote user data (corpus values, file names): never read as markup.
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(code=2)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)


def _settings():
    from cascade.settings import get_settings

    return get_settings()


def _command() -> str:
    """The command line as typed (what every report section records)."""
    return "cascade " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _config_for(name: str, config_file: Optional[Path], create: bool, backend: Optional[str] = None):
    """The index's config: an explicit file, CASCADE_CONFIG_DIR/NAME.yaml, a built-in one, or a new starter."""
    import yaml

    from cascade.config import find_config_file, load_config_file, parse_config
    from cascade.starter import starter_yaml

    s = _settings()
    if config_file is not None:
        return load_config_file(config_file)
    path = find_config_file(name, s.config_dir)
    if path is not None:
        return load_config_file(path)
    if not create:
        from cascade.config import load_config

        return load_config(name, s.config_dir)  # raises with the paths it looked at
    text = starter_yaml(name, backend or "embedded")
    s.config_dir.mkdir(parents=True, exist_ok=True)
    out = s.config_dir / f"{name}.yaml"
    out.write_text(text, encoding="utf-8")
    cfg = parse_config(yaml.safe_load(text), str(out))
    err.print(f"wrote a starter config to [bold]{out}[/] (BM25 + kNN, RRF; add stages there)")
    return cfg


def _dataset_dir(name: str) -> Path:
    from cascade.datasets import locate_dataset

    s = _settings()
    with _progress() as prog:
        task = prog.add_task(f"downloading {name}", total=None, visible=False)

        def on_progress(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total or None, visible=True)

        return locate_dataset(name, s, progress=on_progress)


def _judged(dataset: str, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    from cascade.datasets import load_qrels, load_queries

    folder = _dataset_dir(dataset)
    return load_queries(folder), load_qrels(folder, split)


def _parse_filter(specs: list[str]) -> dict[str, Any]:
    """``year>=2010``, ``journal=Nature``, ``journal=Nature,Cell`` into the filter object of a query."""
    out: dict[str, Any] = {}
    for spec in specs:
        for op, key in ((">=", "gte"), ("<=", "lte"), (">", "gt"), ("<", "lt"), ("=", None)):
            if op in spec:
                field, raw = (x.strip() for x in spec.split(op, 1))
                break
        else:
            raise CascadeError(f"--filter {spec!r}: expected FIELD=VALUE, FIELD>=VALUE, FIELD<VALUE, ...")
        if not field:
            raise CascadeError(f"--filter {spec!r}: no field name")

        def val(x: str) -> Any:
            try:
                return json.loads(x)
            except json.JSONDecodeError:
                return x

        if key is None:
            vals = [val(x) for x in raw.split(",")]
            out[field] = vals if len(vals) > 1 else vals[0]
        else:
            out.setdefault(field, {})[key] = val(raw)
    return out


def _open(name: str, config: Optional[Path], profiles: Optional[list[str]] = None, stages: bool = True,
          pair_cache: bool = False):
    """The index opened through cascade.builder with the named profiles (None: its default profile).

    ``stages=False``: retrieval, fusion and features only (feature logs, before the models they train exist).
    ``pair_cache``: an in-process pair-score cache, as the service has, for configs with ``cache.pair_scores``.
    An unknown profile raises UnknownProfile, which lists the index's profiles.
    """
    from cascade.builder import open_index

    cfg = _config_for(name, config, create=False)
    wanted = list(dict.fromkeys(profiles)) if profiles else [cfg.default_profile]
    store = None
    if pair_cache:
        from connectors.score_cache import MemoryPairStore

        store = MemoryPairStore()
    return open_index(cfg, _settings(), profiles=wanted, stages=stages, pair_store=store)


async def _closing(opened, aw):
    """Await ``aw``, then close the index it ran on (backend sessions, model threads)."""
    try:
        return await aw
    finally:
        await opened.close()


def _write_section(report: Path, result: Any, **markdown: Any) -> None:
    """A benchmark result's Markdown section, filed under its key in ``report``."""
    from cascade.report import machine, update_section

    key, title = result.section()
    update_section(report, key, title, result.markdown(markdown.pop("command", None) or _command(), machine(),
                                                       **markdown))
    err.print(f"updated {report}")


def _with_progress(label: str, total: int | None, run: Callable[[Callable[[int, int], None]], Any]) -> Any:
    """``run(on_progress)`` under one progress bar (``on_progress(done, total)``, what every benchmark takes)."""
    with _progress() as prog:
        task = prog.add_task(label, total=total)
        return run(lambda done, tot: prog.update(task, completed=done, total=tot))


def _show(result: Any, report: Optional[Path], **markdown: Any) -> None:
    """Print a benchmark result's table and, with ``--report``, file its Markdown section."""
    console.print(result.table())
    if report:
        _write_section(report, result, **markdown)
