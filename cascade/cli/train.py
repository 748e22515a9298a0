"""Models from judgments: `cascade features log`, `cascade train ltr|cross-encoder|eval-cross-encoder`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cascade.cli.common import (_closing, _config_for, _dataset_dir, _fail, _judged, _open, _progress, _settings,
                                _setup, _show, _with_progress, _write_section, console, err)
from cascade.errors import CascadeError

features_app = typer.Typer(no_args_is_help=True, help="Learning-to-rank feature logs.")
train_app = typer.Typer(no_args_is_help=True, help="Train models from feature logs.")

RECIPES = Path(__file__).resolve().parent.parent.parent / "features" / "training" / "recipes"


def _log_features(dataset: str, split: str, index_name: str | None, out: Path, limit: int | None,
                  config: Optional[Path], profile: Optional[str] = None, qrels_file: Optional[Path] = None) -> dict:
    """Candidates and features of the judged queries, as the profile's LTR stage will see them (no stage loaded).
    ``qrels_file``: judgments from this file (e.g. ``cascade train labels``) instead of the dataset's split."""
    from cascade.datasets import load_qrels, load_queries
    from features.logging import log_features

    folder = _dataset_dir(dataset)
    queries, qrels = load_queries(folder), load_qrels(folder, split)
    if qrels_file is not None:
        from features.training.labels import read_qrels_file

        qrels, extra = read_qrels_file(qrels_file)
        queries = {**queries, **extra}
        split = qrels_file.name
    opened = _open(index_name or dataset, config, [profile] if profile else None, stages=False)
    casc = opened.cascade(profile)
    n = min(limit or len(qrels), len(qrels))
    with _progress() as prog:
        task = prog.add_task(f"logging features {dataset} {split}", total=n)
        stats = asyncio.run(_closing(opened, log_features(
            casc, queries, qrels, out, source=f"{dataset}/{split}", limit=limit,
            on_progress=lambda d, t: prog.update(task, completed=d))))
    err.print(f"wrote {out}: {stats['rows']} rows for {stats['queries']} queries ({stats['positives']} relevant "
              f"candidates, {len(casc.features.names)} features)")
    return stats


@features_app.command("log")
def features_log(
    dataset: str = typer.Option(..., help="BEIR dataset whose judged queries to log."),
    split: str = typer.Option("train", help="qrels split."),
    out: Path = typer.Option(..., help="Parquet file to write."),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index (default: the dataset's name)."),
    profile: Optional[str] = typer.Option(None, help="Rank profile whose feature set to log (default: the "
                                          "index's default_profile)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    config: Optional[Path] = typer.Option(None, help="Cascade YAML (default: CASCADE_CONFIG_DIR/NAME.yaml)."),
    qrels: Optional[Path] = typer.Option(None, help="Judgments from this qrels TSV instead of --split (e.g. click "
                                                    "labels from `cascade train labels`; their queries file beside)."),
) -> None:
    """Run candidate generation and feature extraction for judged queries; one Parquet row per candidate."""
    _setup()
    try:
        _log_features(dataset, split, index_name, out, limit, config, profile, qrels)
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
    from features.training.ltr import train_ltr

    try:
        for p in data:
            if not p.is_file():
                raise CascadeError(f"--data: {p} is not a file")
        if cv:
            if not dataset:
                raise CascadeError("--cv needs --dataset (its qrels score the held-out folds)")
            from cascade.bench.ltr import cross_validation
            from cascade.datasets import load_qrels

            res = cross_validation(data, load_qrels(_dataset_dir(dataset), split), folds=cv, seed=seed, rounds=rounds,
                                   early_stopping=early_stopping, dataset=dataset, split=split)
            console.print(res.table())
            if report:
                _write_section(report, res)
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
    """A recipe file, or the name of one shipped in features/training/recipes."""
    p = Path(spec)
    if p.is_file():
        return p
    builtin = RECIPES / f"{spec}.yaml"
    if builtin.is_file():
        return builtin
    shipped = sorted(x.stem for x in RECIPES.glob("*.yaml"))
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
    from features.training.cross_encoder import load_recipe, mine_groups, recipe_from_dict, train_cross_encoder

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
    from cascade.bench.backends import compare_models
    from cascade.builder import open_cascade

    queries, qrels = _judged(dataset, split)
    if limit:
        qrels = dict(list(qrels.items())[:limit])
    # Retrieval and fusion only (no stage model loaded): the models reorder the fused candidates.
    casc = open_cascade(_config_for(dataset, None, create=False), _settings(), stages=False)
    res = _with_progress(f"evaluating on {dataset} {split}", len(qrels), lambda on_progress: compare_models(
        casc, queries, qrels, models, _settings(), depth, dataset=dataset, split=split, on_progress=on_progress))
    _show(res, report)


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
