"""The ``cascade`` command line: index, search, eval, demo, serve, config check."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cascade.errors import CascadeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="cascade: BM25 + kNN candidates, fusion and re-ranking stages, declared per index.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect and validate cascade configs.")
app.add_typer(config_app, name="config")
features_app = typer.Typer(no_args_is_help=True, help="Learning-to-rank feature logs.")
app.add_typer(features_app, name="features")
train_app = typer.Typer(no_args_is_help=True, help="Train models from feature logs.")
app.add_typer(train_app, name="train")
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
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)


def _settings():
    from cascade.settings import get_settings

    return get_settings()


def _config_for(name: str, config_file: Optional[Path], create: bool, backend: Optional[str] = None):
    """The index's config: an explicit file, CASCADE_CONFIG_DIR/NAME.yaml, a built-in one, or a new starter."""
    from cascade.config import dump_config, find_config_file, load_config_file, starter_config

    s = _settings()
    if config_file is not None:
        return load_config_file(config_file)
    path = find_config_file(name, s.config_dir)
    if path is not None:
        return load_config_file(path)
    if not create:
        from cascade.config import load_config

        return load_config(name, s.config_dir)  # raises with the paths it looked at
    cfg = starter_config(name)
    if backend == "opensearch":
        from cascade.config import OpenSearchBackendConfig

        cfg = cfg.model_copy(update={"backend": OpenSearchBackendConfig()})
    s.config_dir.mkdir(parents=True, exist_ok=True)
    out = s.config_dir / f"{name}.yaml"
    out.write_text(f"# Starter cascade written by `cascade index`; edit it and bump `version`.\n{dump_config(cfg)}")
    err.print(f"wrote a starter config to [bold]{out}[/] (BM25 + kNN, RRF; add stages there)")
    return cfg


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
                prog.update(task, completed=done + stats.skipped)

        rep = build_index(cfg, iter_corpus(corpus, skip_bad=skip_bad, stats=stats), s, source=str(corpus),
                          total=total, skip_bad=skip_bad, on_progress=on_progress)
    skipped = stats.skipped + rep.skipped
    err.print(f"indexed [bold]{rep.docs}[/] documents into {rep.path} in {rep.seconds:.1f} s "
              f"(embedding {rep.embed_seconds:.1f} s)" + (f"; [yellow]skipped {skipped} bad lines[/]" if skipped else ""))
    for e in stats.errors:
        err.print(f"  [yellow]skipped[/] {e}")


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
                                      source=str(corpus), rebuild=rebuild, skip_bad=skip_bad,
                                      on_progress=lambda done: prog.update(task, completed=done + stats.skipped)))
    if rep.existed:
        err.print(f"index [bold]{rep.index}[/] already exists at {hosts} ({rep.count} documents); "
                  f"--rebuild deletes it and loads it again")
        return
    skipped = stats.skipped + rep.skipped
    err.print(f"loaded [bold]{rep.docs}[/] documents into {rep.index} at {hosts} in {rep.seconds:.1f} s "
              f"(embedding {rep.embed_seconds:.1f} s; the index holds {rep.count})"
              + (f"; [yellow]skipped {skipped} bad lines[/]" if skipped else ""))
    for e in stats.errors:
        err.print(f"  [yellow]skipped[/] {e}")
    if rep.failed:
        err.print(f"[bold red]{len(rep.failed)} documents were refused by the cluster:[/]")
        for f in rep.failed[:20]:
            err.print(f"  {f}", markup=False)
        if len(rep.failed) > 20:
            err.print(f"  ... and {len(rep.failed) - 20} more")
        raise typer.Exit(code=1)


@app.command()
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


def _dataset_dir(name: str) -> Path:
    from cascade.datasets import locate_dataset

    s = _settings()
    with _progress() as prog:
        task = prog.add_task(f"downloading {name}", total=None, visible=False)

        def on_progress(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total or None, visible=True)

        return locate_dataset(name, s, progress=on_progress)


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


def _cascade(name: str, config: Optional[Path], stages: bool = True):
    from cascade.controller import Cascade

    cfg = _config_for(name, config, create=False)
    if not stages:  # candidates and features only: what feature logs need (and the models may not exist yet)
        cfg = cfg.model_copy(update={"stages": []})
    return Cascade.from_config(cfg, _settings())


@app.command()
def search(
    text: str = typer.Argument(..., help="Query text."),
    index_name: str = typer.Option(..., "--index", help="Index to search."),
    size: int = typer.Option(10, help="Number of hits."),
    offset: int = typer.Option(0, "--from", help="Offset of the first hit."),
    filters: list[str] = typer.Option([], "--filter", help="FIELD=VALUE[,VALUE], FIELD>=VALUE, ... (repeatable)."),
    explain: bool = typer.Option(False, help="Show every step's scores and time."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    config: Optional[Path] = typer.Option(None, help="Cascade YAML (default: CASCADE_CONFIG_DIR/NAME.yaml)."),
) -> None:
    """Rank documents for one query through the index's cascade."""
    _setup()
    from cascade.query import Query

    try:
        casc = _cascade(index_name, config)
        q = Query(text=text, filters=_parse_filter(filters), size=size, offset=offset)
        res = asyncio.run(casc.search(q))
    except CascadeError as exc:
        _fail(exc)
        return
    hits = res.hits(explain=explain)
    if as_json:
        out = {"took_ms": round(res.took_ms, 2), "degraded": res.degraded, "hits": hits}
        if explain:
            out["plan"] = casc.plan()
            out["trace"] = [t.as_dict(top=size) for t in res.traces]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if explain:
        plan = Table(title="cascade " + f"{casc.config.index} v{casc.config.version}")
        for c in ("step", "declared", "in", "out", "scored", "ms", "elapsed ms"):
            plan.add_column(c, justify="left" if c in ("step", "declared") else "right")
        decl = {p["name"]: ", ".join(f"{k}={v}" for k, v in p.items() if k != "name" and v is not None) for p in casc.plan()}
        for t in res.traces:
            plan.add_row(t.name + (" [red](failed)[/]" if t.error else ""), decl.get(t.name, ""), str(t.n_in),
                         str(t.n_out), str(t.scored), f"{t.ms:.1f}", f"{t.elapsed_ms:.1f}")
        console.print(plan)
    table = Table(title=f"{text!r} on {index_name}: {len(hits)} hits in {res.took_ms:.0f} ms")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("score", justify="right")
    if explain:
        table.add_column("retrievers (score, rank)")
        table.add_column("stage scores")
    table.add_column("title / text")
    for i, h in enumerate(hits, start=offset + 1):
        f = h["fields"]
        snippet = (f.get("title") or "") + (" — " if f.get("title") else "") + (f.get("text") or "")[:120]
        row = [str(i), h["id"], f"{h['score']:.4f}" if h["score"] is not None else "-"]
        if explain:
            row.append("\n".join(f"{k}: {v['score']:.3f} (#{v['rank']})" for k, v in h["retrievers"].items()))
            row.append("\n".join(f"{k}: {v:.4f}" for k, v in h["stages"].items() if v is not None))
        row.append(snippet)
        table.add_row(*row)
    console.print(table)
    if explain and hits and hits[0].get("features"):
        top = hits[:5]
        ft = Table(title="features of the top hits (what the ltr stage scored)")
        ft.add_column("feature")
        for h in top:
            ft.add_column(h["id"], justify="right")
        for name in hits[0]["features"]:
            ft.add_row(name, *(f"{h['features'][name]:.4g}" if h["features"][name] is not None else "-" for h in top))
        console.print(ft)
    for name in res.degraded:
        err.print(f"[yellow]degraded:[/] step {name} failed; the ranking was built without it")


def _run_eval(dataset: str, index_name: str | None, split: str, limit: int | None, config: Optional[Path]):
    from cascade.datasets import load_qrels, load_queries
    from cascade.evaluation import evaluate

    folder = _dataset_dir(dataset)
    queries, qrels = load_queries(folder), load_qrels(folder, split)
    casc = _cascade(index_name or dataset, config)
    n = min(limit or len(qrels), len(qrels))
    with _progress() as prog:
        task = prog.add_task(f"evaluating {dataset} {split}", total=n)
        rep = asyncio.run(evaluate(casc, queries, qrels, dataset=dataset, split=split, limit=limit,
                                   on_progress=lambda d, t: prog.update(task, completed=d)))
    return rep


def _emit(rep, json_out: Optional[Path], plot_out: Optional[Path], report: Optional[Path], command: str, key: str) -> None:
    from cascade.report import markdown_section, plot, rich_table, update_section

    console.print(rich_table(rep))
    if rep.skipped_queries:
        err.print(f"[yellow]{rep.skipped_queries} queries skipped (invalid query text)[/]")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rep.as_json(), indent=2))
        err.print(f"wrote {json_out}")
    if plot_out:
        plot(rep, plot_out)
        err.print(f"wrote {plot_out}")
    if report:
        image = os.path.relpath(plot_out, report.parent) if plot_out else None
        update_section(report, key, f"{rep.dataset} {rep.split}: every step of the `{rep.index}` cascade",
                       markdown_section(rep, command, image))
        err.print(f"updated {report}")


@app.command("eval")
def eval_cmd(
    dataset: str = typer.Option(..., help="BEIR dataset (queries and qrels) under CASCADE_DATA_DIR."),
    split: str = typer.Option("test", help="qrels split."),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index (default: the dataset's name)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of quality and latency per step."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section for this run."),
    config: Optional[Path] = typer.Option(None, help="Cascade YAML (default: CASCADE_CONFIG_DIR/NAME.yaml)."),
) -> None:
    """nDCG@10, recall@100, MRR@10 and latency for every retriever and stage, from one pass."""
    _setup()
    try:
        rep = _run_eval(dataset, index_name, split, limit, config)
        _emit(rep, json_out, plot_out, report, "cascade " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              f"eval-{rep.index}-{split}")
    except CascadeError as exc:
        _fail(exc)


def _train_missing_ltr(cfg, dataset: str) -> None:
    """Train the LTR models a config names but nobody has trained yet, on the dataset's train split."""
    from cascade.stages.ltr import LTRConfig, resolve_model_dir
    from features.training import train_ltr

    s = _settings()
    for st in cfg.stages:
        if isinstance(st, LTRConfig) and resolve_model_dir(st.model, s) is None:
            if Path(st.model).is_absolute() or len(Path(st.model).parts) > 1:
                raise CascadeError(f"LTR model {st.model} does not exist; train it with `cascade train ltr --out {st.model}`")
            err.print(f"LTR model [bold]{st.model}[/] not trained yet: logging features on {dataset} train and training it")
            log = s.trained_dir / f"{st.model}.train.parquet"
            _log_features(dataset, "train", cfg.index, log, None, None)
            res = train_ltr([log], s.trained_dir / st.model)
            err.print(f"trained {st.model}: {res.best_iteration} trees; validation nDCG@10 "
                      f"{res.metrics.get('valid_ndcg@10', float('nan')):.4f} vs fusion order "
                      f"{res.metrics.get('valid_fusion_ndcg@10', float('nan')):.4f} (candidates only)")


@app.command()
def demo(
    dataset: str = typer.Option("scifact", help="BEIR dataset with a built-in or configured cascade."),
    split: str = typer.Option("test"),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    report: Path = typer.Option(Path("docs/benchmarks.md"), help="Markdown file to update with the table."),
    plot_out: Path = typer.Option(Path("docs/img/demo-scifact.png"), "--plot", help="Where to write the plot."),
    json_out: Optional[Path] = typer.Option(None, "--json"),
    prepare_only: bool = typer.Option(False, help="Only build the index and train missing models."),
    serve_after: bool = typer.Option(True, "--serve/--no-serve", help="Then serve the index over HTTP until Ctrl-C."),
    host: Optional[str] = typer.Option(None, help="With --serve: address (default: CASCADE_HOST, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="With --serve: port (default: CASCADE_PORT, 8080)."),
) -> None:
    """Index SciFact (once), evaluate every step on its test queries, record the table, then serve the index."""
    _setup()
    try:
        from cascade.config import find_config_file
        from cascade.datasets import corpus_file

        folder = _dataset_dir(dataset)
        cfg = _config_for(dataset, None, create=True)
        _build(cfg, corpus_file(folder), rebuild=False, skip_bad=False)
        _train_missing_ltr(cfg, dataset)
        if prepare_only:
            return
        rep = _run_eval(dataset, None, split, limit, None)
        cmd = "make demo" + (f" (cascade demo --limit {limit})" if limit else " (cascade demo)")
        _emit(rep, json_out, plot_out, report, cmd, "demo")
        if not serve_after:
            return
        from cascade.service.registry import ConfigSource

        path = find_config_file(cfg.index, _settings().config_dir)
        if path is None:  # unreachable: _config_for found or wrote it
            raise CascadeError(f"no config file for {cfg.index}")
        _serve(ConfigSource(files=(path,)), host, port, access_log=True,
               example_query="does cholesterol cause heart disease" if dataset == "scifact" else "example query")
    except CascadeError as exc:
        _fail(exc)


def _serve(source, host: Optional[str], port: Optional[int], access_log: bool,
           example_query: str = "example query") -> None:
    """Check the configs like start-up will, say where the service listens and how to call it, then serve."""
    from cascade.service import create_app, serve as run_server

    s = _settings()
    host = host or s.host
    port = s.port if port is None else port
    configs = source.read()  # a bad config stops here with FILE: key: reason, before anything listens
    names = sorted(configs)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    body = json.dumps({"query": example_query, "size": 3, "explain": True})
    err.print(f"serving [bold]{', '.join(names)}[/] at [bold]{url}[/] (cache: "
              f"{'redis ' + s.redis_url if s.redis_url else 'in-process LRU; set CASCADE_REDIS_URL for Redis'}); "
              f"indexes open in the background, {url}/readyz says when they are ready")
    err.print(f"  try: curl -s {url}/v1/indexes/{names[0]}/search -H 'Content-Type: application/json' "
              f"-d {shlex.quote(body)}", markup=False)
    err.print(f"  API: {url}/docs   metrics: {url}/metrics   stop: Ctrl-C", markup=False)
    logging.getLogger("cascade.service").setLevel(logging.INFO)
    run_server(create_app(s, source), host, port, access_log=access_log)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Address to listen on (default: CASCADE_HOST, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default: CASCADE_PORT, 8080)."),
    index_config: Optional[Path] = typer.Option(
        None, "--index-config", help="Folder of NAME.yaml cascade configs, one index each (default: CASCADE_CONFIG_DIR)."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log one line per request."),
) -> None:
    """Serve every index in the config folder over HTTP: search, explain, Redis cache, metrics, reload."""
    _setup()
    from cascade.service.registry import ConfigSource

    try:
        _serve(ConfigSource(directory=index_config or _settings().config_dir), host, port, access_log)
    except CascadeError as exc:
        _fail(exc)


def _log_features(dataset: str, split: str, index_name: str | None, out: Path, limit: int | None,
                  config: Optional[Path]) -> dict:
    from cascade.datasets import load_qrels, load_queries
    from features.logging import log_features

    folder = _dataset_dir(dataset)
    queries, qrels = load_queries(folder), load_qrels(folder, split)
    casc = _cascade(index_name or dataset, config, stages=False)
    n = min(limit or len(qrels), len(qrels))
    with _progress() as prog:
        task = prog.add_task(f"logging features {dataset} {split}", total=n)
        stats = asyncio.run(log_features(casc, queries, qrels, out, source=f"{dataset}/{split}", limit=limit,
                                         on_progress=lambda d, t: prog.update(task, completed=d)))
    err.print(f"wrote {out}: {stats['rows']} rows for {stats['queries']} queries ({stats['positives']} relevant "
              f"candidates, {len(casc.features.names)} features)")
    return stats


@features_app.command("log")
def features_log(
    dataset: str = typer.Option(..., help="BEIR dataset whose judged queries to log."),
    split: str = typer.Option("train", help="qrels split."),
    out: Path = typer.Option(..., help="Parquet file to write."),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index (default: the dataset's name)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    config: Optional[Path] = typer.Option(None, help="Cascade YAML (default: CASCADE_CONFIG_DIR/NAME.yaml)."),
) -> None:
    """Run candidate generation and feature extraction for judged queries; one Parquet row per candidate."""
    _setup()
    try:
        _log_features(dataset, split, index_name, out, limit, config)
    except CascadeError as exc:
        _fail(exc)


def _resolve_out(out: str) -> Path:
    p = Path(out)
    return p if (p.is_absolute() or len(p.parts) > 1) else _settings().trained_dir / out


@train_app.command("ltr")
def train_ltr_cmd(
    data: list[Path] = typer.Option(..., help="Feature log(s) from `cascade features log`."),
    out: str = typer.Option("ltr", help="Model folder, or a name under CASCADE_TRAINED_DIR."),
    valid_fraction: float = typer.Option(0.2, min=0.0, max=0.9, help="Share of queries held out for early stopping."),
    seed: int = typer.Option(13),
    rounds: int = typer.Option(150, min=1, help="Maximum boosting rounds."),
    early_stopping: int = typer.Option(50, min=1, help="Stop after this many rounds without validation gain."),
    monotone: list[str] = typer.Option([], help="FEATURE=1 or FEATURE=-1: monotone constraint (repeatable)."),
    learning_rate: Optional[float] = typer.Option(None, min=0.0),
    num_leaves: Optional[int] = typer.Option(None, min=2),
    cv: Optional[int] = typer.Option(None, min=2, help="Cross-validate with K query folds instead of training one model."),
    dataset: Optional[str] = typer.Option(None, help="With --cv: dataset whose qrels score the folds."),
    split: str = typer.Option("test", help="With --cv: qrels split."),
    report: Optional[Path] = typer.Option(None, help="With --cv: update this Markdown file's section."),
) -> None:
    """Train a LightGBM lambdarank model (text format + JSON metadata + importance plot)."""
    _setup()
    from features.training import cross_validate, train_ltr

    try:
        for p in data:
            if not p.is_file():
                raise CascadeError(f"--data: {p} is not a file")
        if cv:
            if not dataset:
                raise CascadeError("--cv needs --dataset (its qrels score the held-out folds)")
            from cascade.datasets import load_qrels

            rows = cross_validate(data, load_qrels(_dataset_dir(dataset), split), folds=cv, seed=seed,
                                  rounds=rounds, early_stopping=early_stopping)
            t = Table(title=f"{cv}-fold cross-validation by query ({dataset} {split})")
            for c in ("fold", "queries", "fusion nDCG@10", "ltr nDCG@10", "gain"):
                t.add_column(c, justify="right")
            for r in rows:
                t.add_row(str(r["fold"]), str(r["queries"]), f"{r['fusion_ndcg@10']:.4f}", f"{r['ltr_ndcg@10']:.4f}",
                          f"{r['ltr_ndcg@10'] - r['fusion_ndcg@10']:+.4f}")
            import statistics

            f_mean = statistics.fmean(r["fusion_ndcg@10"] for r in rows)
            l_mean = statistics.fmean(r["ltr_ndcg@10"] for r in rows)
            t.add_row("mean", str(sum(r["queries"] for r in rows)), f"{f_mean:.4f}", f"{l_mean:.4f}", f"{l_mean - f_mean:+.4f}")
            console.print(t)
            if report:
                from cascade.report import machine, update_section

                lines = [f"Command: `cascade {' '.join(shlex.quote(a) for a in sys.argv[1:])}`  ",
                         f"Machine: {machine()}  ",
                         "Folds split by query; each fold trains on the other folds (20% of them held out for "
                         "early stopping) and ranks the held-out queries' logged candidates.", "",
                         "| fold | queries | fusion nDCG@10 | LTR nDCG@10 | gain |", "|---:|---:|---:|---:|---:|"]
                lines += [f"| {r['fold']} | {r['queries']} | {r['fusion_ndcg@10']:.4f} | {r['ltr_ndcg@10']:.4f} | "
                          f"{r['ltr_ndcg@10'] - r['fusion_ndcg@10']:+.4f} |" for r in rows]
                lines += [f"| **mean** | {sum(r['queries'] for r in rows)} | {f_mean:.4f} | {l_mean:.4f} | "
                          f"{l_mean - f_mean:+.4f} |", ""]
                update_section(report, f"ltr-cv-{dataset}", f"LTR {cv}-fold cross-validation on {dataset} {split}",
                               "\n".join(lines))
                err.print(f"updated {report}")
            return
        params = {k: v for k, v in (("learning_rate", learning_rate), ("num_leaves", num_leaves)) if v is not None}
        res = train_ltr(data, _resolve_out(out), valid_fraction=valid_fraction, seed=seed, rounds=rounds,
                        early_stopping=early_stopping, monotone=monotone, params=params)
    except CascadeError as exc:
        _fail(exc)
        return
    m = res.metrics
    err.print(f"trained {res.best_iteration} trees on {m['train_queries']} queries; wrote {res.folder}/model.txt, "
              f"model.json, importance.png")
    if "valid_ndcg@10" in m:
        err.print(f"validation ({m['valid_queries']} queries, candidates only): nDCG@10 {m['valid_ndcg@10']:.4f} "
                  f"vs fusion order {m['valid_fusion_ndcg@10']:.4f}")


def _recipe_path(spec: str) -> Path:
    """A recipe file, or the name of one shipped in features/recipes."""
    p = Path(spec)
    if p.is_file():
        return p
    builtin = Path(__file__).resolve().parent.parent / "features" / "recipes" / f"{spec}.yaml"
    if builtin.is_file():
        return builtin
    shipped = sorted(x.stem for x in builtin.parent.glob("*.yaml"))
    raise CascadeError(f"--recipe {spec!r}: no such file, and not a built-in recipe ({', '.join(shipped)})")


@train_app.command("cross-encoder")
def train_cross_encoder_cmd(
    recipe: Optional[str] = typer.Option(None, help="Recipe YAML, or a built-in recipe name (minilm-l6-ce-v1)."),
    dataset: Optional[str] = typer.Option(None, help="Without --recipe: train on this dataset's judgments."),
    split: str = typer.Option("train", help="With --dataset: qrels split."),
    index_name: Optional[str] = typer.Option(None, "--index", help="With --dataset: index that mines negatives."),
    base: Optional[str] = typer.Option(None, help="Checkpoint to start from (default: the recipe's, else all-MiniLM-L6-v2)."),
    miner: Optional[str] = typer.Option(None, help="Retriever of the index that mines hard negatives, or `fusion`."),
    out: str = typer.Option("cross-encoder", help="Model folder, or a name under CASCADE_TRAINED_DIR."),
    epochs: Optional[int] = typer.Option(None, min=1),
    learning_rate: Optional[float] = typer.Option(None, min=0.0),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Stop after N steps (a smoke run)."),
    seed: Optional[int] = typer.Option(None),
    precision: Optional[str] = typer.Option(None, help="auto, float32 or bfloat16 (mixed precision)."),
    eval_on: Optional[str] = typer.Option(None, "--eval", help="DATASET:SPLIT to evaluate on afterwards (never a training set)."),
    compare: Optional[str] = typer.Option(None, help="With --eval: a model to compare with, on the same pairs."),
    eval_depth: int = typer.Option(30, min=1, help="With --eval: fused candidates each model reorders."),
    eval_limit: Optional[int] = typer.Option(None, min=1, help="With --eval: only the first N judged queries."),
    report: Optional[Path] = typer.Option(None, help="With --eval: update this Markdown file's section."),
) -> None:
    """Fine-tune a cross-encoder (listwise loss, hard negatives mined by the index's first stage)."""
    _setup()
    from features.ce_training import load_recipe, mine_groups, recipe_from_dict, train_cross_encoder

    overrides = {"base": base, "miner": miner, "epochs": epochs, "learning_rate": learning_rate,
                 "max_steps": max_steps, "seed": seed, "precision": precision}
    try:
        if (recipe is None) == (dataset is None):
            raise CascadeError("give either --recipe (a file or built-in name) or --dataset")
        if recipe is not None:
            rec = load_recipe(_recipe_path(recipe), overrides)
        else:
            rec = recipe_from_dict({**{k: v for k, v in overrides.items() if v is not None},
                                    "data": [{"dataset": dataset, "split": split, "index": index_name}]}, "--dataset")
        if eval_on:
            ev_dataset, _, ev_split = eval_on.partition(":")
            ev_split = ev_split or "test"
            seen = {(d.dataset, d.split) for d in rec.data if not d.titles}
            if (ev_dataset, ev_split) in seen:
                raise CascadeError(f"--eval {eval_on}: the model trains on it; evaluate on a held-out split")
        s = _settings()
        target = _resolve_out(out)
        groups, stats = [], []
        with _progress() as prog:
            for spec in rec.data:
                task = prog.add_task(f"mining {spec.label} ({rec.miner} top {rec.mine_depth})", total=None)
                g, st = mine_groups(spec, rec, s, on_progress=lambda d, t, task=task: prog.update(task, completed=d, total=t))
                groups += g
                stats.append(st)
        t = Table(title=f"training groups: 1 relevant + {rec.hard_negatives} hard + {rec.random_negatives} random")
        for c in ("source", "available", "groups", "hard negatives", "random negatives"):
            t.add_column(c, justify="right")
        for st in stats:
            t.add_row(st.source, str(st.candidates), str(st.groups), str(st.hard), str(st.random))
        t.add_row("total", "", str(len(groups)), str(sum(x.hard for x in stats)), str(sum(x.random for x in stats)))
        console.print(t)
        with _progress() as prog:
            task = prog.add_task("training", total=None)
            res = train_cross_encoder(rec, groups, target, s, stats=stats, on_step=lambda k, n, loss: prog.update(
                task, completed=k, total=n, description=f"training (loss {loss:.3f})"))
        err.print(f"trained {res.steps} steps on {res.groups} groups in {res.seconds / 60:.1f} min; loss "
                  f"{res.first_loss:.3f} -> {res.last_loss:.3f}; wrote {res.folder}")
        if eval_on:
            _eval_cross_encoders(ev_dataset, ev_split, {res.folder.name: str(res.folder)} | (
                {compare: compare} if compare else {}), eval_depth, eval_limit, report)
    except CascadeError as exc:
        _fail(exc)


def _eval_cross_encoders(dataset: str, split: str, models: dict[str, str], depth: int, limit: Optional[int],
                         report: Optional[Path]) -> None:
    """Each model reorders the same fused top ``depth`` of the dataset's index, alone (no combination)."""
    from cascade.bench_backends import compare_backends
    from connectors.rerankers import load_cross_encoder

    queries, qrels = _judged(dataset, split)
    if limit:
        qrels = dict(list(qrels.items())[:limit])
    from cascade.controller import Cascade

    cfg = _config_for(dataset, None, create=False)  # the first stage only: models reorder its candidates
    casc = Cascade.from_config(cfg.model_copy(update={"stages": [], "features": None}), _settings())
    scorers = {n: load_cross_encoder([m], _settings(), max_length=256, batch_size=32) for n, m in models.items()}
    with _progress() as prog:
        task = prog.add_task(f"evaluating on {dataset} {split}", total=len(qrels))
        bench = compare_backends(casc, queries, qrels, scorers, ["title", "text"], depth=depth,
                                 on_progress=lambda d, t: prog.update(task, completed=d, total=t))
    t = Table(title=f"{dataset} {split}: fused top {depth} reordered by each cross-encoder alone")
    for c in ("model", "nDCG@10", "vs fusion", "pairs/s"):
        t.add_column(c, justify="right")
    t.add_row("fusion (no cross-encoder)", f"{bench.fusion_ndcg_10:.4f}", "", "")
    for r in bench.results:
        t.add_row(r.name, f"{r.ndcg_10:.4f}", f"{r.ndcg_10 - bench.fusion_ndcg_10:+.4f}", f"{r.pairs_per_s:.0f}")
    console.print(t)
    if report:
        from cascade.report import update_section

        lines = _report_head() + [
            f"{bench.queries} judged queries; each model reorders the same fused top {depth} (score alone, no "
            f"combination), torch, `dtype: auto`, max_length 256.", "",
            "| model | nDCG@10 | vs fusion | Spearman vs first |", "|---|---:|---:|---:|",
            f"| fusion (no cross-encoder) | {bench.fusion_ndcg_10:.4f} | | |"]
        lines += [f"| {r.name} | {r.ndcg_10:.4f} | {r.ndcg_10 - bench.fusion_ndcg_10:+.4f} | {r.spearman:.3f} |"
                  for r in bench.results]
        update_section(report, f"ce-finetune-{dataset}", f"Fine-tuned cross-encoder on {dataset} {split}",
                       "\n".join(lines + [""]))
        err.print(f"updated {report}")


@train_app.command("eval-cross-encoder")
def eval_cross_encoder_cmd(
    models: list[str] = typer.Argument(..., help="Cross-encoders to compare (paths or names)."),
    dataset: str = typer.Option("scifact"),
    split: str = typer.Option("test"),
    depth: int = typer.Option(30, min=1, help="Fused candidates each model reorders."),
    limit: Optional[int] = typer.Option(None, min=1),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """Compare cross-encoders on the same fused candidates of a dataset (each score alone)."""
    _setup()
    try:
        _eval_cross_encoders(dataset, split, {m: m for m in models}, depth, limit, report)
    except CascadeError as exc:
        _fail(exc)


def _judged(dataset: str, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    from cascade.datasets import load_qrels, load_queries

    folder = _dataset_dir(dataset)
    return load_queries(folder), load_qrels(folder, split)


def _report_head() -> list[str]:
    """The first lines of every benchmark section: the exact command and the machine."""
    from cascade.report import machine

    return [f"Command: `cascade {' '.join(shlex.quote(a) for a in sys.argv[1:])}`  ", f"Machine: {machine()}  "]


@app.command("bench")
def bench_cmd(
    dataset: str = typer.Option("scifact", help="Dataset with a built index and a cascade that has a cross-encoder."),
    split: str = typer.Option("test"),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    depths: str = typer.Option("10,20,30,50", help="Extra cross-encoder depths for the quality/latency curve."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write {naive, cascade, ratios} as JSON."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="PNG of nDCG@10 against p95 latency."),
) -> None:
    """The naive pipeline (BM25 top 100, cross-encoder on every pair) beside the cascade, side by side."""
    _setup()
    from cascade.bench import naive_vs_cascade
    from cascade.report import update_section

    try:
        queries, qrels = _judged(dataset, split)
        casc = _cascade(dataset, None)
        ds = tuple(int(x) for x in depths.split(",") if x.strip())
        n = min(limit or len(qrels), len(qrels))
        with _progress() as prog:
            task = prog.add_task(f"naive vs cascade on {dataset} {split}", total=n)
            arms = naive_vs_cascade(casc, queries, qrels, depths=ds, limit=limit,
                                    on_progress=lambda d, t: prog.update(task, completed=d))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    summ = {k: a.summary(qrels) for k, a in arms.items()}
    nv, cs = summ["naive"], summ["cascade"]
    ratios = {"ndcg@10": round(cs["ndcg@10"] / nv["ndcg@10"], 4) if nv["ndcg@10"] else None,
              "ce_pairs": round(cs["ce_pairs_per_query"] / nv["ce_pairs_per_query"], 3),
              "p50_speedup": round(nv["p50_ms"] / cs["p50_ms"], 2), "p95_speedup": round(nv["p95_ms"] / cs["p95_ms"], 2)}
    t = Table(title=f"naive vs cascade, {dataset} {split}, {len(arms['naive'].ms)} queries")
    for c in ("pipeline", "nDCG@10", "CE pairs/q", "p50 ms", "p95 ms"):
        t.add_column(c, justify="left" if c == "pipeline" else "right")
    for k, v in summ.items():
        t.add_row(k, f"{v['ndcg@10']:.4f}", f"{v['ce_pairs_per_query']:.0f}", f"{v['p50_ms']:.0f}", f"{v['p95_ms']:.0f}")
    console.print(t)
    console.print(f"cascade / naive: nDCG@10 {ratios['ndcg@10']:.3f}x, pairs {ratios['ce_pairs']:.2f}x, "
                  f"p95 {ratios['p95_speedup']:.1f}x faster")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"naive": nv, "cascade": cs, "ratios": ratios,
                                        "variants": {k: v for k, v in summ.items() if k.startswith("cascade@")}}, indent=2))
    if plot_out:
        from cascade.report import plot_pareto

        plot_pareto(summ, f"{dataset} {split}", plot_out)
    if report:
        lines = [*_report_head(),
                 f"{len(arms['naive'].ms)} {dataset} {split} queries; each query runs every pipeline in one process, "
                 f"alternating which goes first; the same cross-encoder ({casc.stages[-1].describe().get('model')}, "
                 f"{casc.stages[-1].describe().get('dtype')}) in all.", "",
                 "| pipeline | nDCG@10 | CE pairs/query | p50 ms | p95 ms |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['ndcg@10']:.4f} | {v['ce_pairs_per_query']:.0f} | {v['p50_ms']:.0f} | {v['p95_ms']:.0f} |"
                  for k, v in summ.items()]
        lines += ["", f"Cascade / naive: nDCG@10 **{ratios['ndcg@10']:.3f}x**, CE pairs **{ratios['ce_pairs']:.2f}x**, "
                  f"p50 **{ratios['p50_speedup']:.1f}x** and p95 **{ratios['p95_speedup']:.1f}x** faster.", ""]
        if plot_out:
            lines += [f"![quality against latency]({os.path.relpath(plot_out, report.parent)})", ""]
        update_section(report, f"naive-vs-cascade-{dataset}", "Naive BM25 + cross-encoder against the cascade", "\n".join(lines))
        err.print(f"updated {report}")


@app.command("bench-combine")
def bench_combine(
    dataset: str = typer.Option("scifact"),
    split: str = typer.Option("test"),
    limit: Optional[int] = typer.Option(None, min=1),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """nDCG@10 of every way to combine the cross-encoder with the stage before it (depth, normalization, weights)."""
    _setup()
    from cascade.bench import combination_sweep
    from cascade.report import update_section

    try:
        queries, qrels = _judged(dataset, split)
        casc = _cascade(dataset, None)
        n = min(limit or len(qrels), len(qrels))
        with _progress() as prog:
            task = prog.add_task("scoring candidates once", total=n)
            rows = combination_sweep(casc, queries, qrels, limit=limit,
                                     on_progress=lambda d, t: prog.update(task, completed=d))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    kinds = [s.kind for s in casc.stages]
    prev = casc.stages[len(kinds) - 1 - kinds[::-1].index("cross_encoder") - 1].name
    t = Table(title=f"cross-encoder combined with {prev}: nDCG@10 on {dataset} {split} ({n} queries)")
    for c in ("CE depth", "normalize", f"w cross_encoder : w {prev}", "nDCG@10"):
        t.add_column(c, justify="right")
    lines = [f"| CE depth | normalize | w cross_encoder : w {prev} | nDCG@10 |", "|---:|---|---|---:|"]
    for r in rows:
        label = f"{r['w_ce']:g} : {r['w_prev']:g}" if r["depth"] else f"{prev} alone"
        t.add_row(str(r["depth"]), r["normalize"], label, f"{r['ndcg@10']:.4f}")
        lines.append(f"| {r['depth']} | {r['normalize']} | {label} | {r['ndcg@10']:.4f} |")
    console.print(t)
    if report:
        body = "\n".join([*_report_head(),
                           "Each query's top candidates are scored by the cross-encoder once; every row re-orders the "
                           "same scores. Weight 1 : 0 is the cross-encoder alone. Measured on the evaluation split "
                           "itself (the model saw SciFact train, so train cannot pick weights fairly): read small "
                           "differences as noise.", "", *lines, ""])
        update_section(report, f"combine-{dataset}", f"Combining the cross-encoder with {prev} ({dataset} {split})", body)
        err.print(f"updated {report}")


@app.command("bench-ltr")
def bench_ltr(
    dataset: str = typer.Option("scifact", help="Dataset whose queries to time."),
    split: str = typer.Option("test"),
    candidates: int = typer.Option(200, min=1, help="Candidates per query (retrievers' k and fusion keep)."),
    limit: Optional[int] = typer.Option(None, min=1),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """Time features + LightGBM scoring per query on N fused candidates (p50/p95)."""
    _setup()
    from cascade.bench import ltr_latency
    from cascade.controller import Cascade
    from cascade.report import update_section

    try:
        queries, qrels = _judged(dataset, split)
        cfg = _config_for(dataset, None, create=False)
        retr = {n: r.model_copy(update={"k": candidates}) for n, r in cfg.retrievers.items()}
        cfg = cfg.model_copy(update={"retrievers": retr, "fusion": cfg.fusion.model_copy(update={"keep": candidates})})
        casc = Cascade.from_config(cfg, _settings())
        texts = [queries[q] for q in qrels if q in queries][:limit]
        with _progress() as prog:
            task = prog.add_task("timing features + LTR", total=len(texts))
            r = ltr_latency(casc, texts, on_progress=lambda d, t: prog.update(task, completed=d))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    t = Table(title=f"features + LightGBM per query, {r.candidates_mean:.0f} candidates on average ({r.queries} queries)")
    for c in ("part", "p50 ms", "p95 ms"):
        t.add_column(c, justify="right" if c != "part" else "left")
    for name, a, b in (("features", r.features_p50_ms, r.features_p95_ms), ("LightGBM predict", r.predict_p50_ms,
                       r.predict_p95_ms), ("total", r.total_p50_ms, r.total_p95_ms)):
        t.add_row(name, f"{a:.2f}", f"{b:.2f}")
    console.print(t)
    if report:
        body = "\n".join([
            *_report_head(),
            f"{r.queries} {dataset} {split} queries, {r.candidates_mean:.1f} fused candidates each on average; "
            f"best of 3 runs per query, retrieval not timed, one thread.", "",
            "| part | p50 ms | p95 ms |", "|---|---:|---:|",
            f"| features ({len(casc.features.names)}) | {r.features_p50_ms:.2f} | {r.features_p95_ms:.2f} |",
            f"| LightGBM predict | {r.predict_p50_ms:.2f} | {r.predict_p95_ms:.2f} |",
            f"| **total** | **{r.total_p50_ms:.2f}** | **{r.total_p95_ms:.2f}** |", ""])
        update_section(report, f"ltr-latency-{dataset}", f"LTR stage cost: features + LightGBM for {candidates} candidates", body)
        err.print(f"updated {report}")


@app.command("bench-serve")
def bench_serve(
    dataset: str = typer.Option("scifact", help="Dataset whose queries to send (its index must be built)."),
    split: str = typer.Option("test"),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index (default: the dataset's name)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N queries for the uncached pass."),
    concurrency: list[int] = typer.Option([1, 4, 16], help="Connections of the cache-hit load (repeatable)."),
    duration: int = typer.Option(10, min=1, max=300, help="Seconds of load per concurrency level."),
    with_cross_encoder: bool = typer.Option(False, help="Keep cross-encoder stages (about 0.8 s per uncached query)."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """Time the HTTP service: cache hits under load (wrk) and uncached searches beside in-process ones."""
    _setup()
    from cascade.report import machine, update_section
    from cascade.service import bench
    from connectors.embedded import index_exists

    try:
        queries, qrels = _judged(dataset, split)
        cfg = _config_for(index_name or dataset, None, create=False)
        if cfg.backend.type == "embedded" and not index_exists(cfg, _settings()):
            raise CascadeError(f"index {cfg.index} is not built; run `cascade index --dataset {dataset}` "
                               f"(or `cascade demo --prepare-only`) first")
        cfg = bench.cheap_config(cfg, with_cross_encoder)
        texts = [queries[q] for q in qrels if q in queries][:limit]
        r = bench.run(cfg, _settings(), texts, concurrency=concurrency, duration_s=duration,
                      on_step=lambda s: err.print(f"[dim]{s}[/]"))
    except CascadeError as exc:
        _fail(exc)
        return
    t = Table(title=f"cache hits through HTTP ({r.load[0].tool if r.load else '-'}; cache: {r.cache_backend})")
    for c in ("connections", "requests/s", "p50 ms", "p99 ms", "hits", "errors", "service CPU µs/req"):
        t.add_column(c, justify="right")
    for x in r.load:
        t.add_row(str(x.concurrency), f"{x.rps:,.0f}", f"{x.p50_ms:.2f}", f"{x.p99_ms:.2f}", str(x.hits), str(x.errors),
                  f"{x.service_cpu_us:.0f}" if x.service_cpu_us is not None else "?")
    console.print(t)
    import numpy as np

    u = Table(title=f"uncached: {r.queries} queries, cascade {r.cascade}")
    for c in ("path", "p50 ms", "p95 ms"):
        u.add_column(c, justify="right" if c != "path" else "left")
    for name, v in (("HTTP (client)", r.http_uncached_ms), ("HTTP (took_ms)", r.server_uncached_ms),
                    ("in-process", r.inproc_ms)):
        u.add_row(name, f"{np.percentile(v, 50):.1f}", f"{np.percentile(v, 95):.1f}")
    console.print(u)
    if report:
        cmd = "make bench (cascade " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + ")"
        title = "HTTP service: cache hits under load, uncached searches through HTTP and in-process"
        update_section(report, f"service-{cfg.index}", title, bench.markdown(r, cmd, machine()))
        err.print(f"updated {report}")


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
        console.print(f"[green]ok[/] {name} v{c.version}: {' → '.join([*c.retrievers, 'fusion', *(s.stage_name for s in c.stages)])}")


@config_app.command("show")
def config_show(index_name: str = typer.Argument(..., help="Index name.")) -> None:
    """Print the effective config of an index (defaults filled in)."""
    _setup()
    from cascade.config import dump_config

    try:
        console.print(dump_config(_config_for(index_name, None, create=False)), markup=False, highlight=False)
    except CascadeError as exc:
        _fail(exc)


# Cross-encoder models: ONNX export and the side-by-side benchmark of every local backend.
models_app = typer.Typer(no_args_is_help=True, help="Export cross-encoders for faster inference.")
app.add_typer(models_app, name="models")


@models_app.command("export-onnx")
def models_export_onnx(
    model: str = typer.Argument(..., help="A path, a folder under CASCADE_MODELS_DIR, or a hub name."),
    out: Path = typer.Option(..., "--out", help="Folder to write (created if missing)."),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Also write model.int8.onnx (dynamic int8 quantization)."),
    opset: int = typer.Option(17, min=17, help="ONNX opset."),
    max_length: Optional[int] = typer.Option(None, min=16, help="Token limit recorded for scoring (default: the model's)."),
) -> None:
    """Export a cross-encoder to ONNX (float32, and int8), check its logits against torch, write cascade-onnx.json."""
    _setup()
    from connectors.onnx_export import export_onnx

    try:
        meta = export_onnx(model, _settings(), out, int8=int8, opset=opset, max_length=max_length)
    except CascadeError as exc:
        _fail(exc)
        return
    fused = ", ".join(f"{k} {v}" for k, v in meta["fused_operators"].items()) or "none"
    err.print(f"exported {meta['resolved']} (opset {meta['opset']}, max_length {meta['max_length']}; fused: {fused})")
    for name, info in meta["files"].items():
        c = info["check"]
        err.print(f"wrote {out / name}: {info['precision']}, {(out / name).stat().st_size / 2**20:.1f} MiB; vs torch on "
                  f"{c['pairs']} pairs: max |Δ logit| {c['max_abs_diff']:.2e}, Spearman {c['spearman']:.4f}")
    err.print(f"use it with: {{type: cross_encoder, backend: onnx, model: {out}, onnx_file: "
              f"{'model.int8.onnx' if int8 else 'model.onnx'}}}", markup=False)


@app.command("bench-backends")
def bench_backends_cmd(
    dataset: str = typer.Option("scifact", help="Dataset with a built index and a cross_encoder stage in its config."),
    split: str = typer.Option("test", help="qrels split (for minilm-l6-ce-v1 only SciFact test is clean)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    depth: int = typer.Option(20, min=1, help="Fused candidates scored per query."),
    onnx: Optional[Path] = typer.Option(None, help="Folder from `cascade models export-onnx` "
                                        "(default: CASCADE_TRAINED_DIR/MODEL-onnx)."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """Score the same top fused candidates with torch fp32, torch bf16, ONNX fp32 and ONNX int8: pairs/s and nDCG@10."""
    _setup()
    from cascade.bench_backends import compare_backends, markdown
    from cascade.controller import Cascade
    from cascade.report import machine, update_section
    from cascade.stages.cross_encoder import CrossEncoderConfig
    from connectors.onnx_scorer import default_threads, load_onnx_cross_encoder
    from connectors.rerankers import load_cross_encoder

    try:
        s = _settings()
        queries, qrels = _judged(dataset, split)
        if limit:
            qrels = dict(list((q, r) for q, r in qrels.items() if q in queries)[:limit])
        cfg = _config_for(dataset, None, create=False)
        ce = next((st for st in cfg.stages if isinstance(st, CrossEncoderConfig)), None)
        if ce is None:
            raise CascadeError(f"the config of {dataset} has no cross_encoder stage to take the model from")
        onnx_dir = onnx or s.trained_dir / f"{Path(ce.model).name}-onnx"
        casc = Cascade.from_config(cfg.model_copy(update={"stages": [], "features": None}), s)
        common = dict(max_length=ce.max_length, batch_size=ce.batch_size)
        scorers = {
            "torch fp32": load_cross_encoder([ce.model, *ce.fallback], s, dtype="float32", **common),
            "torch bf16": load_cross_encoder([ce.model, *ce.fallback], s, dtype="bfloat16", **common),
            "onnx fp32": load_onnx_cross_encoder([str(onnx_dir)], s, onnx_file="model.onnx", **common),
            "onnx int8": load_onnx_cross_encoder([str(onnx_dir)], s, onnx_file="model.int8.onnx", **common),
        }
        with _progress() as prog:
            task = prog.add_task(f"scoring {dataset} {split} with {len(scorers)} backends", total=len(qrels))
            bench = compare_backends(casc, queries, qrels, scorers, ce.fields, depth=depth,
                                     on_progress=lambda d, t: prog.update(task, completed=d))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    ref = bench.by_name()[bench.reference]
    t = Table(title=f"{ce.model} on {bench.queries} {dataset} {split} queries, top {depth} fused candidates")
    for c in ("backend", "pairs/s", "× torch fp32", "ms/query", "nDCG@10", "Δ nDCG@10", "Spearman"):
        t.add_column(c, justify="left" if c == "backend" else "right")
    for r in bench.results:
        t.add_row(r.name, f"{r.pairs_per_s:.1f}", f"{r.pairs_per_s / ref.pairs_per_s:.2f}", f"{r.p50_ms:.0f}",
                  f"{r.ndcg_10:.4f}", f"{r.ndcg_10 - ref.ndcg_10:+.4f}", f"{r.spearman:.4f}")
    console.print(t)
    if report:
        import onnxruntime

        cmd = "cascade " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        notes = [f"Model `{ce.model}`, max_length {ce.max_length}, batch_size {ce.batch_size}; every backend tokenizes "
                 f"the same way (query first, document cut by tokens, batches sorted by length). ONNX Runtime "
                 f"{onnxruntime.__version__} with {default_threads(s)} intra-op threads; ONNX graphs from "
                 f"`cascade models export-onnx` ({onnx_dir.name}).",
                 "pairs/s is the median over queries of one call's pairs per second (tokenization included); "
                 "nDCG@10 is on the judged queries of this split."]
        update_section(report, f"ce-backends-{dataset}", f"Cross-encoder backends side by side on {dataset} {split}",
                       markdown(bench, cmd, machine(), notes))
        err.print(f"updated {report}")


@app.command("bench-microbatch")
def bench_microbatch_cmd(
    dataset: str = typer.Option("scifact", help="Dataset with a built index and a cross_encoder stage in its config."),
    split: str = typer.Option("test", help="Queries of this qrels split."),
    limit: Optional[int] = typer.Option(96, min=1, help="Only the first N judged queries."),
    depth: int = typer.Option(20, min=1, help="Fused candidates scored per query."),
    clients: str = typer.Option("8", help="Concurrent clients; a comma list runs each in turn (e.g. 4,8)."),
    max_wait_ms: float = typer.Option(2.0, min=0, help="Micro-batcher: longest wait for company."),
    max_pairs: int = typer.Option(256, min=1, help="Micro-batcher: most pairs per model pass."),
    backend: str = typer.Option("torch", help="torch (the config's model and dtype) or onnx (an export's int8 graph)."),
    torch_threads: str = typer.Option("", help="torch: intra-op thread counts to run in turn, e.g. 2,1 "
                                      "(default: as configured, CASCADE_TORCH_THREADS or torch's own)."),
    onnx: Optional[Path] = typer.Option(None, help="onnx: folder from `cascade models export-onnx` "
                                        "(default: CASCADE_TRAINED_DIR/MODEL-onnx)."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """Concurrent clients through per-request threads vs the micro-batcher: pairs/s, queries/s, p50/p95."""
    _setup()
    from cascade import bench_microbatch as bm
    from cascade.controller import Cascade
    from cascade.report import update_section
    from cascade.stages.cross_encoder import CrossEncoderConfig
    from connectors.rerankers import load_pair_scorer

    try:
        counts = [int(c) for c in clients.split(",") if c.strip()]
        threads = [int(c) for c in torch_threads.split(",") if c.strip()]
        if not counts or min(counts) < 1 or min(threads, default=1) < 1:
            raise ValueError(f"--clients {clients!r} / --torch-threads {torch_threads!r}: positive integers, e.g. 4,8")
        if threads and backend != "torch":
            raise ValueError("--torch-threads is for --backend torch (ONNX Runtime: CASCADE_TORCH_THREADS)")
        if backend not in ("torch", "onnx"):
            raise ValueError(f"--backend {backend!r}: torch or onnx (micro-batching is for local backends)")
        s = _settings()
        queries, qrels = _judged(dataset, split)
        texts = [queries[q] for q in qrels if q in queries][:limit]
        cfg = _config_for(dataset, None, create=False)
        ce = next((st for st in cfg.stages if isinstance(st, CrossEncoderConfig)), None)
        if ce is None:
            raise CascadeError(f"the config of {dataset} has no cross_encoder stage to take the model from")
        if backend == "onnx":
            onnx_dir = onnx or s.trained_dir / f"{Path(ce.model).name}-onnx"
            ce = ce.model_copy(update={"backend": "onnx", "model": str(onnx_dir), "fallback": [], "dtype": "auto",
                                       "onnx_file": "model.int8.onnx"})
        scorer = load_pair_scorer(ce, s)
        casc = Cascade.from_config(cfg.model_copy(update={"stages": [], "features": None}), s)
        requests = bm.collect_requests(casc, texts, ce.fields, depth)
        load_before = bm.load_average()
        benches = []
        if threads:
            import torch

            configured = torch.get_num_threads()
        with _progress() as prog:
            for t in threads or [None]:
                if t is not None:
                    torch.set_num_threads(t)
                for n in counts:
                    task = prog.add_task(f"{n} clients{f', {t} threads' if t else ''}, {len(requests)} queries, "
                                         "both modes", total=None)
                    benches.append(bm.compare_microbatch(
                        scorer, requests, clients=n, max_wait_ms=max_wait_ms, max_pairs=max_pairs,
                        on_progress=lambda d, tot, _k=task: prog.update(_k, completed=d, total=tot)))
        if threads:
            torch.set_num_threads(configured)  # the report's machine line shows the configured count
        load_after = bm.load_average()
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    t = Table(title=f"{scorer.name} ({getattr(scorer, 'dtype', '?')}) on {len(requests)} {dataset} {split} queries, "
                    f"top {depth} fused candidates")
    for c in ("threads", "clients", "mode", "pairs/s", "queries/s", "p50 ms", "p95 ms", "CPU ms/pair", "× per request",
              "requests/pass"):
        t.add_column(c, justify="left" if c == "mode" else "right")
    for b in benches:
        for name, r in b.modes.items():
            on = name == bm.BATCHED
            t.add_row(str(b.threads or "-"), str(b.clients), name, f"{r.pairs_per_s:.1f}", f"{r.queries_per_s:.2f}",
                      f"{r.p50_ms:.0f}", f"{r.p95_ms:.0f}", f"{r.cpu_ms_per_pair:.0f}", f"{b.ratio if on else 1.0:.2f}",
                      f"{b.requests_per_pass if on else 1.0:.1f}")
    console.print(t)
    err.print(f"{load_before} before, {load_after} after")
    if report:
        notes = [(f"Model `{scorer.name}` ({backend}, {getattr(scorer, 'dtype', '?')}), max_length {ce.max_length}, "
                  f"batch_size {ce.batch_size}. Per request: each query's pairs scored by `asyncio.to_thread("
                  f"scorer.score)` (the stage without `micro_batch`; the default executor runs up to "
                  f"{min(32, (os.cpu_count() or 1) + 4)} at once). Micro-batched: the same scorer behind "
                  f"`connectors.microbatch.MicroBatcher` (one model thread, pairs length-sorted across requests)."),
                 f"Machine load: {load_before} before the run, {load_after} after (other jobs share this machine)."]
        update_section(report, f"microbatch-{dataset}-{backend}",
                       f"Micro-batching concurrent cross-encoder requests ({backend}) on {dataset} {split}",
                       bm.markdown(benches, _report_head(), notes))
        err.print(f"updated {report}")


if __name__ == "__main__":  # pragma: no cover
    app()
