"""`cascade search`, `cascade eval` and `cascade demo`: rank one query, evaluate rank profiles, the whole demo."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cascade.cli.common import (_closing, _command, _config_for, _dataset_dir, _fail, _open, _parse_filter,
                                _progress, _settings, _setup, console, err)
from cascade.errors import CascadeError


def search(
    text: str = typer.Argument(..., help="Query text."),
    index_name: str = typer.Option(..., "--index", help="Index to search."),
    size: int = typer.Option(10, help="Number of hits."),
    offset: int = typer.Option(0, "--from", help="Offset of the first hit."),
    filters: list[str] = typer.Option([], "--filter", help="FIELD=VALUE[,VALUE], FIELD>=VALUE, ... (repeatable)."),
    profile: Optional[str] = typer.Option(None, help="Rank profile (default: the index's default_profile)."),
    explain: bool = typer.Option(False, help="Show every step's scores and time."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    config: Optional[Path] = typer.Option(None, help="Cascade YAML (default: CASCADE_CONFIG_DIR/NAME.yaml)."),
) -> None:
    """Rank documents for one query through the index's cascade (one of its rank profiles)."""
    _setup()
    from cascade.query import Query

    try:
        q = Query(text=text, filters=_parse_filter(filters), size=size, offset=offset)
        opened = _open(index_name, config, [profile] if profile else None)
        casc = opened.cascade(profile)
        res = asyncio.run(_closing(opened, casc.search(q)))
    except CascadeError as exc:
        _fail(exc)
        return
    hits = res.hits(explain=explain)
    several = len(casc.config.profile_names()) > 1
    if as_json:
        out = {"took_ms": round(res.took_ms, 2), "profile": casc.profile, "degraded": res.degraded, "hits": hits}
        if explain:
            out["plan"] = casc.plan()
            out["trace"] = [t.as_dict(top=size) for t in res.traces]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if explain:
        plan = Table(title=f"cascade {casc.config.index} v{casc.config.version}"
                           + (f", profile {casc.profile}" if several else ""))
        for c in ("step", "declared", "in", "out", "scored", "ms", "elapsed ms"):
            plan.add_column(c, justify="left" if c in ("step", "declared") else "right")
        decl = {p["name"]: ", ".join(f"{k}={v}" for k, v in p.items() if k != "name" and v is not None) for p in casc.plan()}
        for t in res.traces:
            plan.add_row(t.name + (" [red](failed)[/]" if t.error else ""), decl.get(t.name, ""), str(t.n_in),
                         str(t.n_out), str(t.scored), f"{t.ms:.1f}", f"{t.elapsed_ms:.1f}")
        console.print(plan)
    table = Table(title=f"{text!r} on {index_name}" + (f" ({casc.profile})" if several else "")
                        + f": {len(hits)} hits in {res.took_ms:.0f} ms")
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


def _run_eval(dataset: str, index_name: str | None, split: str, limit: int | None, config: Optional[Path],
              profiles: Optional[list[str]] = None, budget_ms: float | None = None,
              pair_cache: bool = False) -> tuple[list, str]:
    """One EvalReport per profile (default: the index's default profile), all from one pass over the queries;
    and the index's default profile."""
    from cascade.datasets import load_qrels, load_queries
    from cascade.evaluation import evaluate_profiles

    folder = _dataset_dir(dataset)
    queries, qrels = load_queries(folder), load_qrels(folder, split)
    # A dataset given as a path (the workbench's judgments folder) names its index by the folder's name.
    opened = _open(index_name or Path(dataset).name, config, profiles, pair_cache=pair_cache)
    cascades = list(opened.profiles.values())
    n = min(limit or len(qrels), len(qrels))
    what = f"evaluating {dataset} {split}" + (f" ({len(cascades)} profiles)" if len(cascades) > 1 else "")
    with _progress() as prog:
        task = prog.add_task(what, total=n)
        reps = asyncio.run(_closing(opened, evaluate_profiles(
            cascades, queries, qrels, dataset=dataset, split=split, limit=limit, budget_ms=budget_ms,
            on_progress=lambda d, t: prog.update(task, completed=d))))
    return reps, opened.config.default_profile


def _warn_failures(rep) -> None:
    """Failures are counted in the metrics (as zeros); say so, with the first errors, instead of hiding them."""
    steps = [f"{s.name} on {s.failed}" for s in rep.stages if s.failed]
    if not rep.failed_queries and not steps:
        return
    parts = ([f"{rep.failed_queries} queries failed"] if rep.failed_queries else []) + (
        [f"steps failed: {', '.join(steps)} queries"] if steps else [])
    err.print(f"[yellow]profile {rep.profile}: {'; '.join(parts)} (counted as 0 in the metrics)[/]")
    for e in rep.errors[:3]:
        err.print(f"  {e}", style="yellow", markup=False)


def _comparison(reps: list) -> Table:
    """Each profile's last step side by side: what the profile as a whole buys and costs."""
    t = Table(title="profiles side by side (last step)")
    for c in ("profile", "nDCG@10", "p50 ms", "cost/q"):
        t.add_column(c, justify="left" if c == "profile" else "right")
    for rep in reps:
        last = rep.stages[-1] if rep.stages else None
        if last is None:
            t.add_row(rep.profile, "-", "-", "-")
            continue
        cost = ", ".join(f"{v:.0f} {u}" for u, v in last.cost_per_query.items()) or "0"
        t.add_row(rep.profile, f"{last.ndcg_10:.4f}", f"{last.p50_ms:.1f}", cost)
    return t


def _profile_path(path: Path, profile: str, several: bool) -> Path:
    return path.with_name(f"{path.stem}-{profile}{path.suffix}") if several else path


def _emit(reps: list, json_out: Optional[Path], plot_out: Optional[Path], report: Optional[Path], command: str,
          key: str, default_profile: str = "default") -> None:
    from cascade.report import markdown_section, plot, rich_table, update_section

    several = len(reps) > 1
    for rep in reps:
        console.print(rich_table(rep))
        if rep.skipped_queries:
            err.print(f"[yellow]{rep.skipped_queries} queries skipped (invalid query text)[/]")
        _warn_failures(rep)
    if several:
        console.print(_comparison(reps))
    from cascade.ui.evals import save_last_eval  # what the workbench's evaluation view shows

    for rep in reps:
        try:
            save_last_eval(rep, _settings(), command)
        except (OSError, ValueError) as exc:  # the evaluation itself stands: say so, go on with its outputs
            err.print(f"not kept for the workbench: {exc}", style="yellow", markup=False)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        data = {"profiles": [r.as_json() for r in reps]} if several else reps[0].as_json()
        json_out.write_text(json.dumps(data, indent=2))
        err.print(f"wrote {json_out}")
    plots: dict[str, Path] = {}
    if plot_out:
        for rep in reps:
            plots[rep.profile] = plot(rep, _profile_path(plot_out, rep.profile, several))
            err.print(f"wrote {plots[rep.profile]}")
    if report:
        for rep in reps:
            other = rep.profile != default_profile
            image = os.path.relpath(plots[rep.profile], report.parent) if rep.profile in plots else None
            title = f"{rep.dataset} {rep.split}: every step of the `{rep.index}` cascade" + (
                f", profile `{rep.profile}`" if other or several else "")
            update_section(report, f"{key}-{rep.profile}" if other else key, title,
                           markdown_section(rep, command, image))
        err.print(f"updated {report}")


def eval_cmd(
    dataset: str = typer.Option(..., help="BEIR dataset (queries and qrels) under CASCADE_DATA_DIR."),
    split: str = typer.Option("test", help="qrels split."),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index (default: the dataset's name)."),
    profiles: list[str] = typer.Option([], "--profile", help="Rank profile to evaluate (repeatable: several on the "
                                       "same queries in one pass; default: the index's default_profile)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    budget_ms: Optional[float] = typer.Option(None, min=0.001, help="Latency budget per search, as the service "
                                              "applies it (default: none)."),
    pair_cache: bool = typer.Option(False, "--pair-cache/--no-pair-cache", help="Cache pair scores in this "
                                    "process as the service does for configs with cache.pair_scores (default: off, "
                                    "so every pair is scored)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of quality and latency per step "
                                            "(NAME-PROFILE.png each with several profiles)."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section for this run."),
    config: Optional[Path] = typer.Option(None, help="Cascade YAML (default: CASCADE_CONFIG_DIR/NAME.yaml)."),
) -> None:
    """nDCG@10, recall@100, MRR@10, latency and cost for every retriever and stage of each profile, from one pass."""
    _setup()
    try:
        reps, default = _run_eval(dataset, index_name, split, limit, config, profiles or None, budget_ms, pair_cache)
        _emit(reps, json_out, plot_out, report, _command(), f"eval-{reps[0].index}-{split}", default)
    except CascadeError as exc:
        _fail(exc)


def _train_missing_ltr(cfg, dataset: str) -> None:
    """Train the LTR models the config's profiles name but nobody has trained yet, on the dataset's train split."""
    from cascade.cli.train import _log_features
    from cascade.stages.ltr import LTRConfig, resolve_model_dir
    from features.training.ltr import train_ltr

    s = _settings()
    done: set[str] = set()
    for pname in cfg.profile_names():
        for st in cfg.profile(pname).stages:
            if not isinstance(st, LTRConfig) or st.model in done or resolve_model_dir(st.model, s) is not None:
                continue
            if Path(st.model).is_absolute() or len(Path(st.model).parts) > 1:
                raise CascadeError(f"LTR model {st.model} does not exist; train it with `cascade train ltr --out {st.model}`")
            err.print(f"LTR model [bold]{st.model}[/] not trained yet: logging features on {dataset} train and training it")
            log = s.trained_dir / f"{st.model}.train.parquet"
            _log_features(dataset, "train", cfg.index, log, None, None, profile=pname)  # that profile's features
            res = train_ltr([log], s.trained_dir / st.model)
            done.add(st.model)
            err.print(f"trained {st.model}: {res.best_iteration} trees; validation nDCG@10 "
                      f"{res.metrics.get('valid_ndcg@10', float('nan')):.4f} vs fusion order "
                      f"{res.metrics.get('valid_fusion_ndcg@10', float('nan')):.4f} (candidates only)")


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
        from cascade.cli.index import _build
        from cascade.config import find_config_file
        from cascade.datasets import corpus_file

        folder = _dataset_dir(dataset)
        cfg = _config_for(dataset, None, create=True)
        _build(cfg, corpus_file(folder), rebuild=False, skip_bad=False)
        _train_missing_ltr(cfg, dataset)
        if prepare_only:
            return
        reps, _ = _run_eval(dataset, None, split, limit, None)
        cmd = "make demo" + (f" (cascade demo --limit {limit})" if limit else " (cascade demo)")
        _emit(reps, json_out, plot_out, report, cmd, "demo", cfg.default_profile)
        if not serve_after:
            return
        from cascade.cli.serve import _serve
        from cascade.service.registry import ConfigSource

        path = find_config_file(cfg.index, _settings().config_dir)
        if path is None:  # unreachable: _config_for found or wrote it
            raise CascadeError(f"no config file for {cfg.index}")
        _serve(ConfigSource(files=(path,)), host, port, access_log=True,
               example_query="does cholesterol cause heart disease" if dataset == "scifact" else "example query")
    except CascadeError as exc:
        _fail(exc)
