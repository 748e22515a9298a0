"""`cascade index`: build (or reuse) an embedded index, or load a corpus into an OpenSearch cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from cascade.cli.common import _config_for, _dataset_dir, _fail, _progress, _settings, _setup, err
from cascade.errors import CascadeError


def _build(cfg, corpus: Path, rebuild: bool, skip_bad: bool) -> None:
    from cascade.datasets import LoadStats, count_lines, iter_corpus
    from connectors.embedded import build_index, index_exists

    s = _settings()
    existing = index_exists(cfg, s)
    if existing and not rebuild:
        err.print(f"index [bold]{cfg.index}[/] is up to date ({existing['docs']} documents, built "
                  f"{existing['built_at']}); --rebuild to build it again")
        return
    total = count_lines(corpus)
    stats = LoadStats()
    with _progress() as prog:
        task = prog.add_task(f"indexing {cfg.index}", total=total)

        def on_progress(phase: str, done: int, tot: int | None) -> None:
            if phase == "hnsw":
                prog.update(task, description=f"building HNSW graph for {cfg.index}")
            else:
                prog.update(task, completed=done)

        rep = build_index(cfg, iter_corpus(corpus, skip_bad=skip_bad, stats=stats), s, source=str(corpus),
                          total=total, skip_bad=skip_bad, stats=stats, on_progress=on_progress)
    skipped = rep.skipped  # parse and field errors, one count (the manifest records the same)
    err.print(f"indexed [bold]{rep.docs}[/] documents into {rep.path} in {rep.seconds:.1f} s "
              f"(embedding {rep.embed_seconds:.1f} s)" + (f"; [yellow]skipped {skipped} bad lines[/]" if skipped else ""))
    for e in stats.errors:
        err.print(f"  [yellow]skipped[/] {escape(e)}")


def _build_opensearch(cfg, corpus: Path, rebuild: bool, skip_bad: bool) -> None:
    """Create the config's index in its OpenSearch cluster and bulk-load the corpus with embeddings."""
    from cascade.datasets import LoadStats, count_lines, iter_corpus
    from connectors.opensearch.admin import load_corpus

    total = count_lines(corpus)
    stats = LoadStats()
    hosts = ", ".join(cfg.backend.hosts)
    with _progress() as prog:
        task = prog.add_task(f"loading {cfg.backend.index_name(cfg.index)} at {hosts}", total=total)
        rep = asyncio.run(load_corpus(cfg, iter_corpus(corpus, skip_bad=skip_bad, stats=stats), _settings(),
                                      source=str(corpus), rebuild=rebuild, skip_bad=skip_bad, stats=stats,
                                      on_progress=lambda done: prog.update(task, completed=done)))
    if rep.existed:
        err.print(f"index [bold]{rep.index}[/] already exists at {hosts} ({rep.count} documents); "
                  f"--rebuild deletes it and loads it again")
        return
    skipped = rep.skipped  # parse and field errors, one count
    err.print(f"loaded [bold]{rep.docs}[/] documents into {rep.index} at {hosts} in {rep.seconds:.1f} s "
              f"(embedding {rep.embed_seconds:.1f} s; the index holds {rep.count})"
              + (f"; [yellow]skipped {skipped} bad lines[/]" if skipped else ""))
    for e in stats.errors:
        err.print(f"  [yellow]skipped[/] {escape(e)}")
    if rep.failed:
        err.print(f"[bold red]{len(rep.failed)} documents were refused by the cluster:[/]")
        for f in rep.failed[:20]:
            err.print(f"  {f}", markup=False)
        if len(rep.failed) > 20:
            err.print(f"  ... and {len(rep.failed) - 20} more")
        raise typer.Exit(code=1)


def index(
    dataset: Optional[str] = typer.Option(None, help="A BEIR dataset under CASCADE_DATA_DIR (downloaded if missing)."),
    corpus: Optional[Path] = typer.Option(None, help="Your own corpus: BEIR-style corpus.jsonl or .jsonl.gz."),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index name (default: the dataset's name)."),
    config: Optional[Path] = typer.Option(None, help="Cascade YAML (default: CASCADE_CONFIG_DIR/NAME.yaml)."),
    rebuild: bool = typer.Option(False, help="Build again even if an up-to-date index exists."),
    skip_bad_lines: bool = typer.Option(False, help="Skip and count corpus lines that are not valid records."),
    backend: Optional[str] = typer.Option(None, help="embedded or opensearch (default: the config's backend.type)."),
) -> None:
    """Build (or reuse) an index: embedded (tantivy + faiss on disk) or in the OpenSearch cluster the config names."""
    _setup()
    try:
        if (dataset is None) == (corpus is None):
            raise CascadeError("give either --dataset NAME or --corpus FILE --index NAME")
        if corpus is not None:
            if not index_name:
                raise CascadeError("--corpus needs --index NAME")
            path = corpus
            if not path.is_file():
                raise CascadeError(f"--corpus: {path} is not a file")
        else:
            from cascade.datasets import corpus_file

            path = corpus_file(_dataset_dir(dataset))
            index_name = index_name or dataset
        if backend not in (None, "embedded", "opensearch"):
            raise CascadeError(f"--backend: expected embedded or opensearch, got {backend!r}")
        cfg = _config_for(index_name, config, create=True, backend=backend)
        if (backend or cfg.backend.type) != cfg.backend.type:
            raise CascadeError(f"--backend {backend}: the config of {cfg.index} says backend.type: {cfg.backend.type}; "
                               f"set backend.type: {backend} there (docs/config.md) so that search uses the same index")
        if cfg.backend.type == "opensearch":
            _build_opensearch(cfg, path, rebuild, skip_bad_lines)
        else:
            _build(cfg, path, rebuild, skip_bad_lines)
    except CascadeError as exc:
        _fail(exc)
