"""`cascade tune`: what each step buys at what cost, and a profile chosen on training data only."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cascade.cli.common import _closing, _command, _dataset_dir, _fail, _open, _setup, console, err
from cascade.errors import CascadeError


def _depths(spec: str) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(x) for x in spec.split(",") if x.strip()}))
    except ValueError:
        raise CascadeError(f"--depths {spec!r}: expected whole numbers separated by commas, e.g. 5,10,20,30") from None
    if not out or min(out) < 1:
        raise CascadeError(f"--depths {spec!r}: depths must be at least 1")
    return out


def _space(depths: str, norms: str):
    from cascade.tuning.space import NORMS, Space

    ns = tuple(n.strip() for n in norms.split(",") if n.strip())
    bad = [n for n in ns if n not in NORMS]
    if bad or not ns:
        raise CascadeError(f"--norms {norms!r}: expected some of {', '.join(NORMS)}")
    return Space(depths=_depths(depths), norms=ns)


def tune_cmd(
    dataset: Optional[str] = typer.Option(None, help="BEIR dataset under CASCADE_DATA_DIR (its queries and qrels)."),
    split: str = typer.Option("train", help="qrels split to tune on; never the evaluation split (test) of a "
                                            "collection that has a training split. A collection with only test is "
                                            "tuned by cross-validation by query on it."),
    profile: Optional[str] = typer.Option(None, help="Rank profile to tune (default: the index's default_profile)."),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index (default: the dataset's name)."),
    qrels_file: Optional[Path] = typer.Option(None, "--qrels", help="Judgments file (BEIR TSV or TREC qrels) "
                                              "instead of a dataset split; needs --queries and --index."),
    queries_file: Optional[Path] = typer.Option(None, "--queries", help="Queries (BEIR queries.jsonl) for --qrels."),
    clicks: Optional[Path] = typer.Option(None, help="Click log (JSONL: query, shown, clicked) turned into graded "
                                          "labels by inverse-propensity weighting; needs --index."),
    holdout: Optional[str] = typer.Option(None, help="Afterwards, evaluate (never tune) on this split: current, "
                                          "proposed and the best setting found by brute force on it."),
    folds: int = typer.Option(5, min=2, max=20, help="Cross-validation folds by query."),
    tolerance: float = typer.Option(0.005, min=0.0, max=0.2, help="Choose the cheapest setting within this much "
                                    "nDCG@10 of the best."),
    exit_target: float = typer.Option(0.9, "--exit-target", min=0.1, max=1.0, help="Early exit: keep at least "
                                      "this share of a stage's gain."),
    depths: str = typer.Option("5,10,20,30", help="Depths (rerank) tried for pair stages (cross-encoders)."),
    norms: str = typer.Option("zscore,minmax,rank", help="Normalizations tried for combine weights."),
    fusion_grid: str = typer.Option("default", help="default: RRF k 10/60 and linear min-max/z-score, weights, "
                                    "keeps; small: the same at the current keep only."),
    limit: Optional[int] = typer.Option(None, min=10, help="Only the first N judged queries (quick runs)."),
    seed: int = typer.Option(13, help="Seed of the folds and the bootstrap."),
    scores_cache: bool = typer.Option(True, "--scores-cache/--no-scores-cache", help="Keep pair scores under "
                                      "CASCADE_CACHE_DIR/tune (by model stamp) so a re-run scores only new pairs."),
    name: str = typer.Option("tuned", help="Name of the proposed profile."),
    out: Optional[Path] = typer.Option(None, help="Write the config with the proposed profile added here (the file "
                                       "must be named INDEX.yaml; default .cascade/tuned/INDEX.yaml)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="PNG of quality against cost (Pareto front)."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section for this run."),
    config: Optional[Path] = typer.Option(None, help="Cascade YAML (default: CASCADE_CONFIG_DIR/INDEX.yaml)."),
) -> None:
    """Sweep depths, fusion and combine weights on training data; each step's marginal nDCG@10 with a 95% paired
    bootstrap interval and its cost; a proposed profile (stages that do not pay off) with early exits."""
    _setup()
    try:
        _tune(dataset, split, profile, index_name, qrels_file, queries_file, clicks, holdout, folds, tolerance,
              exit_target, _space(depths, norms), fusion_grid, limit, seed, name, out, json_out, plot_out, report,
              config, scores_cache)
    except (CascadeError, ValueError) as exc:
        _fail(exc)


def _labels(dataset, split, qrels_file, queries_file, clicks, holdout):
    """(queries, qrels, holdout (split, qrels) or None, source name, split label)."""
    from cascade.datasets import load_qrels, load_queries, qrels_splits
    from cascade.tuning.labels import clicks_to_judgments, read_judgments, tuning_mode

    given = [x for x in (dataset, qrels_file, clicks) if x is not None]
    if len(given) != 1:
        raise CascadeError("give one source of labels: --dataset NAME, --qrels FILE (with --queries), or --clicks FILE")
    if clicks is not None:
        queries, qrels = clicks_to_judgments(clicks)
        return queries, qrels, None, clicks.stem, "clicks"
    if qrels_file is not None:
        if queries_file is None:
            raise CascadeError("--qrels needs --queries (the query texts, BEIR queries.jsonl)")
        return _read_queries(queries_file), read_judgments(qrels_file), None, qrels_file.stem, "judgments"
    folder = _dataset_dir(dataset)
    tuning_mode(qrels_splits(folder), split, holdout, dataset)
    queries = load_queries(folder)
    h = (holdout, load_qrels(folder, holdout)) if holdout else None
    return queries, load_qrels(folder, split), h, dataset, split


def _read_queries(path: Path) -> dict[str, str]:
    from cascade.errors import DatasetError

    out = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"--queries {path}: cannot read ({exc.strerror or exc})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[str(rec["_id"])] = str(rec["text"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DatasetError(f"{path}:{n}: expected a JSON object with _id and text") from None
    return out


def _tune(dataset, split, profile, index_name, qrels_file, queries_file, clicks, holdout, folds, tolerance,
          exit_target, space, fusion_grid, limit, seed, name, out, json_out, plot_out, report, config,
          scores_cache=True) -> None:
    from cascade.report import machine, update_section
    from cascade.tuning.proposal import config_text
    from cascade.tuning.report import markdown, plot, tables
    from cascade.cli.common import _settings
    from cascade.tuning.collect import ScoreCache
    from cascade.tuning.run import tune
    from cascade.tuning.space import fusion_variants

    if fusion_grid not in ("default", "small"):
        raise CascadeError(f"--fusion-grid {fusion_grid!r}: expected default or small")
    index = index_name or dataset
    if index is None:
        raise CascadeError("--index: which index to tune (required with --qrels or --clicks)")
    queries, qrels, held, source, split_label = _labels(dataset, split, qrels_file, queries_file, clicks, holdout)
    target = out or Path(".cascade/tuned") / f"{index}.yaml"
    if target.stem != index:
        raise CascadeError(f"--out {target}: a config file is named after its index; call it {index}.yaml")
    opened = _open(index, config, [profile] if profile else None)
    casc = opened.cascade(profile)
    variants = fusion_variants(casc.config.fusion, list(casc.retrievers), small=fusion_grid == "small")

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=False) as prog:
        tasks: dict[str, int] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = prog.add_task(phase, total=total)
            prog.update(tasks[phase], completed=done, total=total)

        res = asyncio.run(_closing(opened, tune(
            casc, queries, qrels, dataset=source, split=split_label, variants=variants, space=space, name=name,
            tolerance=tolerance, target=exit_target, folds=folds, seed=seed, limit=limit, holdout=held,
            scores=ScoreCache(_settings().cache_dir / "tune" / f"{index}.json") if scores_cache else None,
            on_progress=on_progress)))
    data = res.as_json()
    for t in tables(data):
        console.print(t)
    console.print(f"[bold]proposed profile {name}[/] (diff against {res.profile}):")
    console.print(res.diff, markup=False, highlight=False)
    note = (f"Written by: {_command()}\nProfile {name}: chosen on {source} {split_label}; compare with\n"
            f"  cascade eval --dataset {source} --split test --config {target} --profile {res.profile} --profile {name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(config_text(res.config, note), encoding="utf-8")
    err.print(f"wrote {target} (profile [bold]{name}[/] added)")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, indent=1))
        err.print(f"wrote {json_out}")
    image = None
    if plot_out:
        plot(data, plot_out)
        err.print(f"wrote {plot_out}")
    if report:
        if plot_out:
            image = os.path.relpath(plot_out, report.parent)
        update_section(report, f"tune-{source}-{split_label}", f"Tuning the `{res.index}` cascade on {source} "
                       f"{split_label}", markdown(data, _command(), machine(), image))
        err.print(f"updated {report}")
