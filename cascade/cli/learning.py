"""Learning from traffic and from the cascade itself (docs/learning.md): ``train labels`` and ``train embedder``
(registered on ``cascade train`` by :func:`register`) and ``behavior consume|reset``; their benchmarks
``bench-click-labels`` and ``bench-personal`` are in :mod:`cascade.cli.bench_learning` (``train embedder
--report`` is the distillation's).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from cascade.cli.common import _config_for, _dataset_dir, _fail, _progress, _settings, _setup, console, err
from cascade.errors import CascadeError

behavior_app = typer.Typer(no_args_is_help=True, help="Behaviour aggregates in Redis for popularity and "
                                                      "personalized LTR features.")


def _behavior_consumer(index: str) -> tuple[Any, Any]:
    """The index's behaviour consumer on CASCADE_REDIS_URL, and the opened index it reads keyword values from."""
    from cascade.builder import open_index
    from features.personal import BehaviorConsumer, DocValues

    s = _settings()
    if not s.redis_url:
        raise CascadeError("behaviour aggregates live in Redis: set CASCADE_REDIS_URL (the service's)")
    cfg = _config_for(index, None, create=False)
    fts = [cfg.profile(p).features for p in cfg.profile_names()]
    pop = next((f.popularity for f in fts if f is not None and f.popularity is not None), None)
    pers = next((f.personal for f in fts if f is not None and f.personal is not None), None)
    if pop is None and pers is None:
        raise CascadeError(f"index {index}: no profile declares features.popularity or features.personal")
    opened = open_index(cfg, s, profiles=[], stages=False)
    values = DocValues(opened.backend.fetch, pers.field if pers else None)
    return BehaviorConsumer(index, s.redis_url, pop, pers, values), opened


@behavior_app.command("consume")
def behavior_consume(
    index: str = typer.Option(..., "--index", help="Index whose searches and clicks to aggregate."),
    once: bool = typer.Option(False, help="Apply what the stream holds now, then stop (default: follow it)."),
) -> None:
    """Aggregate the event stream into the index's popularity and personal counters in Redis (one per index)."""
    _setup()

    async def main() -> None:
        consumer, opened = _behavior_consumer(index)
        try:
            if once:
                n = await consumer.drain()
                err.print(f"applied {n} records: {consumer.applied}")
                return
            err.print(f"aggregating behaviour of {index} from the event stream (Ctrl-C stops)")
            await consumer.run()
        finally:
            await consumer.close()
            await opened.close()

    try:
        asyncio.run(main())
    except CascadeError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


def log_impressions_cmd(
    index: str = typer.Option(..., "--index", help="Index whose logged searches to log."),
    out: Path = typer.Option(..., help="Parquet feature log to write (one group per logged search)."),
    profile: Optional[str] = typer.Option(None, help="Profile whose feature set (with popularity / personal "
                                                     "features) to log (default: the index's default)."),
    events: str = typer.Option("redis", help="Redis URL of the event stream (`redis`: CASCADE_REDIS_URL)."),
    qrels: Optional[Path] = typer.Option(None, help="Label searches from these judgments (by query text; e.g. "
                                                    "`cascade train labels`; its queries file beside)."),
    dataset: Optional[str] = typer.Option(None, help="With --qrels: the dataset whose query ids they use."),
    clicks: bool = typer.Option(False, help="Label each search by its own clicks instead."),
    every: int = typer.Option(1, min=1, help="Every N-th logged search."),
    limit: Optional[int] = typer.Option(None, min=1, help="At most N searches."),
    anonymous_copies: bool = typer.Option(True, help="Also log each known user's search as an anonymous one "
                                                     "(personal features at their defaults)."),
) -> None:
    """A feature log of logged searches with behaviour features as they were when each was served (replayed
    from the event stream): what a model with popularity or personal features trains on."""
    _setup()
    from cascade.builder import open_cascade, open_index
    from connectors.events import connect, iterate
    from features.personal import DocValues
    from features.training.impressions import log_impressions, qrels_labels, static_config, with_anonymous_copies
    from features.training.labels import known_ids, read_qrels_file
    from features.training.ltr import load_logs

    s = _settings()
    url = s.redis_url if events == "redis" else events
    try:
        if not url:
            raise CascadeError("--events redis: set CASCADE_REDIS_URL or give a redis:// URL")
        if (qrels is None) == (not clicks):
            raise CascadeError("give either --qrels FILE or --clicks to label the searches")
        cfg = _config_for(index, None, create=False)
        prof = profile or cfg.default_profile
        pcfg = cfg.for_profile(prof)
        opened = open_index(cfg, s, profiles=[prof], stages=False)
        ex = opened.cascade(prof).features
        group = next((g for g in (ex.groups if ex else []) if getattr(g, "behavioral", False)), None)
        if group is None:
            raise CascadeError(f"profile {prof} of {index} declares no features.popularity or features.personal")
        label = None
        if qrels is not None:
            judged, extra = read_qrels_file(qrels)
            names = known_ids(extra)
            if dataset:
                from cascade.datasets import load_queries

                names = {**known_ids(load_queries(_dataset_dir(dataset))), **names}
            label = qrels_labels(judged, names)
        values = DocValues(opened.backend.fetch, group.pers.field if group.pers else None)

        async def run() -> dict[str, Any]:
            c = connect(url)
            try:
                return await log_impressions(open_cascade(static_config(pcfg), s, stages=False), group, iterate(c),
                                             values, out, features=ex, labels=label, clicks=clicks, every=every,
                                             limit=limit)
            finally:
                await c.aclose()
                await opened.close()

        with _progress() as prog:
            task = prog.add_task("replaying the event stream", total=None)
            stats = asyncio.run(run())
            prog.update(task, completed=1, total=1)
        if anonymous_copies:
            data = load_logs([out])
            _subset_log(with_anonymous_copies(data), list(data.names), out)
    except CascadeError as exc:
        _fail(exc)
        return
    err.print(f"wrote {out}: {stats['rows']} rows for {stats['searches']} logged searches of {stats['queries']} "
              f"queries ({stats['positives']} positive)")


@behavior_app.command("reset")
def behavior_reset(index: str = typer.Option(..., "--index")) -> None:
    """Delete the index's behaviour aggregates (the consumer then replays the stream from its start)."""
    _setup()
    from connectors.behavior import clear
    from connectors.events import connect

    url = _settings().redis_url
    if not url:
        _fail(CascadeError("set CASCADE_REDIS_URL"))

    async def main() -> int:
        c = connect(url)
        try:
            return await clear(c, index)
        finally:
            await c.aclose()

    err.print(f"deleted {asyncio.run(main())} keys of {index}")


def _holdout_queries(dataset: str, splits: list[str]) -> dict[str, str]:
    """Normalized text -> id of the evaluation queries (the qrels of ``splits``) of ``dataset``."""
    from cascade.datasets import load_qrels, load_queries, qrels_splits
    from features.training.labels import known_ids

    folder = _dataset_dir(dataset)
    queries = load_queries(folder)
    have = qrels_splits(folder)
    held: dict[str, str] = {}
    for split in splits:
        if split not in have:
            raise CascadeError(f"--holdout {split}: {dataset} has no such qrels split (splits: {', '.join(have)})")
        judged = load_qrels(folder, split)
        held.update({t: q for t, q in known_ids({q: queries[q] for q in judged if q in queries}).items()})
    return held


def _events_log(events: str, index: Optional[str]) -> Any:
    from features.training.labels import read_stream, read_ubi

    if events in ("redis", "") or events.startswith(("redis://", "rediss://", "unix://")):
        url = _settings().redis_url if events in ("redis", "") else events
        if not url:
            raise CascadeError("--events redis: set CASCADE_REDIS_URL (the service's) or give a redis:// URL")
        with _progress() as prog:
            task = prog.add_task("reading the event stream", total=None)
            return asyncio.run(read_stream(url, index, on_progress=lambda n: prog.update(task, completed=n)))
    folder = Path(events)
    if not folder.is_dir():
        raise CascadeError(f"--events {events}: not a folder of UBI exports nor a Redis URL")
    return read_ubi(folder, index)


def train_labels(
    events: str = typer.Option(..., help="Where impressions and clicks are: a Redis URL (`redis` for "
                                         "CASCADE_REDIS_URL), or a folder of UBI exports (ubi_queries.ndjson, "
                                         "ubi_events.ndjson: `cascade experiments export-ubi`)."),
    out: Path = typer.Option(..., help="Labels file to write (qrels TSV; queries and a report beside it)."),
    index_name: Optional[str] = typer.Option(None, "--index", help="Only searches of this index."),
    dataset: Optional[str] = typer.Option(None, help="Name queries by this dataset's query ids (matched by text), "
                                                     "so `cascade features log --dataset D --qrels OUT` finds them."),
    holdout: list[str] = typer.Option(["test"], help="With --dataset: its evaluation splits. Logged queries that "
                                                     "are evaluation queries are refused (repeatable)."),
    drop_holdout: bool = typer.Option(False, help="Drop logged evaluation queries instead of refusing."),
    propensity: str = typer.Option("harvest", help="Position-bias estimator: harvest (randomized swaps and A/B "
                                                   "arms), randpair (swaps only), em, regression-em."),
    features: Optional[Path] = typer.Option(None, help="regression-em: a feature log of the logged queries "
                                                       "(`cascade features log`); rank-revealing ret.* features are "
                                                       "left out."),
    labels: str = typer.Option("ipw", help="ipw (propensity-weighted CTR), coec (clicks over expected clicks) "
                                           "or ctr (raw click-through rate)."),
    depth: int = typer.Option(10, min=2, max=100, help="Ranks whose propensity is estimated."),
    min_impressions: int = typer.Option(10, min=1, help="Label only (query, document) pairs shown this often."),
    prior: float = typer.Option(5.0, min=0.0, help="Smoothing prior, in expected examinations, around the "
                                                   "log's mean rate."),
    grades: Optional[str] = typer.Option(None, help="Absolute thresholds of grades 1..n, e.g. 0.2,0.4,0.6,0.8 "
                                                    "(default: evenly above the noise floor)."),
    plot: Optional[Path] = typer.Option(None, help="Draw the estimated propensities per rank."),
) -> None:
    """Graded relevance labels from logged clicks, debiased for position (qrels for `features log --qrels`)."""
    _setup()
    from features.training import labels as lab

    try:
        if labels not in ("ipw", "coec", "ctr"):
            raise CascadeError(f"--labels {labels!r}: choose ipw, coec or ctr")
        if propensity not in ("harvest", "randpair", "em", "regression-em"):
            raise CascadeError(f"--propensity {propensity!r}: choose harvest, randpair, em or regression-em")
        th = [float(x) for x in grades.split(",")] if grades else None
        log = _events_log(events, index_name)
        if log.impressions == 0:
            raise CascadeError(f"--events {events}: no logged search{' of index ' + index_name if index_name else ''}"
                               f" (the service logs searches in experiments, or all with "
                               f"CASCADE_EVENTS_LOG_QUERIES=all)")
        ids: dict[str, str] = {}
        if dataset:
            from cascade.datasets import load_queries

            ids = lab.known_ids(load_queries(_dataset_dir(dataset)))
            held = _holdout_queries(dataset, holdout) if holdout else {}
            leaked = lab.holdout_overlap(log.queries, held)
            if leaked and not drop_holdout:
                raise CascadeError(f"{len(leaked)} logged queries are {dataset} {'/'.join(holdout)} (evaluation) "
                                   f"queries, e.g. {held[leaked[0]]}: {leaked[0][:60]!r}; labels from them would "
                                   f"train on the evaluation set. Use --drop-holdout to leave them out")
            if leaked:
                log = lab.without_queries(log, set(leaked))
                err.print(f"left out {len(leaked)} evaluation queries ({dataset} {'/'.join(holdout)})")
        feats = has = None
        if propensity == "regression-em":
            if features is None:
                raise CascadeError("--propensity regression-em needs --features (a feature log of these queries)")
            feats, has = lab.pair_features(log, features, ids)
        props = lab.estimate(log, propensity, depth, features=feats, has_features=has)
        lab_rows = lab.click_labels(log, labels, propensities=props, depth=depth, min_impressions=min_impressions,
                                    prior_strength=prior, grades=th)
        report = {"events": events, "index": index_name, "impressions": log.impressions, "clicks": log.clicks,
                  "randomized_impressions": int((log.swap > 0).sum()), "skipped": log.skipped,
                  "propensity": props.as_json() if props else None}
        meta = lab.write_labels(lab_rows, out, ids, report)
    except CascadeError as exc:
        _fail(exc)
        return
    t = Table(title=f"position bias ({props.method}), relative to rank 1")
    t.add_column("rank", justify="right")
    t.add_column("propensity", justify="right")
    t.add_column("CTR", justify="right")
    ctr = log.ctr_by_rank(depth)
    for k in range(depth):
        t.add_row(str(k + 1), f"{props.values[k]:.3f}", f"{ctr[k]:.3f}")
    console.print(t)
    for w in lab.sanity(props.values):
        err.print(f"[yellow]warning:[/] {w}")
    err.print(f"{log.impressions} impressions, {log.clicks} clicks, {int((log.swap > 0).sum())} randomized; "
              f"{meta['pairs_labelled']} of {meta['pairs_logged']} (query, document) pairs labelled "
              f"(grades {meta['grade_counts']}) for {meta['queries']} queries; wrote {out}, "
              f"{lab.sidecar(out).name}, {out.with_suffix('.json').name}")
    if plot:
        from cascade.bench.learning import propensity_plot

        err.print(f"wrote {propensity_plot(plot, {props.method: props.values}, None)}")


def train_embedder(
    dataset: str = typer.Option(..., help="BEIR dataset whose training queries teach the embedder."),
    split: str = typer.Option("train", help="qrels split of the training queries."),
    eval_split: list[str] = typer.Option(["test"], "--eval-split", help="Evaluation split(s): never trained on; "
                                                                        "the first is evaluated before and after."),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index whose first stage and reranker are used "
                                                                   "(default: the dataset's name)."),
    teacher: Optional[str] = typer.Option(None, help="Rank profile whose last stage's scores are the teacher "
                                                     "(default: the index's default profile)."),
    out: str = typer.Option("embedder-distilled", help="Model folder, or a name under CASCADE_TRAINED_DIR."),
    new_index: Optional[str] = typer.Option(None, help="Name of the new index version (default: INDEX-distilled)."),
    pairs: int = typer.Option(4, min=1, help="Training pairs per query (the better document against harder ones)."),
    max_queries: Optional[int] = typer.Option(None, min=1, help="At most N training queries (a seeded sample)."),
    epochs: int = typer.Option(1, min=1),
    batch: int = typer.Option(8, min=1, help="Queries per step (each with its pairs)."),
    max_length: Optional[int] = typer.Option(None, min=16, help="Tokens per text in training (default: the "
                                                                "index's embedder max_length)."),
    learning_rate: float = typer.Option(2e-5, min=0.0),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Stop after N steps (a smoke run)."),
    seed: int = typer.Option(13),
    retrain_ltr: bool = typer.Option(False, help="Also retrain the LTR model on the new index (its semantic "
                                                 "features changed) and point the new version's ltr stages at it."),
    eval_limit: Optional[int] = typer.Option(None, min=1, help="Evaluate on the first N queries only."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section with before/after."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
) -> None:
    """Distil the cascade's reranker into its bi-encoder (margin-MSE on hard negatives the first stage mines),
    build a new index version with it, and evaluate kNN and the whole cascade before and after."""
    _setup()
    import random
    import time

    from cascade.builder import open_index
    from cascade.cli.common import _judged
    from cascade.cli.train import _resolve_out
    from cascade.datasets import corpus_file
    from features.training import embedder as emb

    t0 = time.perf_counter()
    s = _settings()
    try:
        index = index_name or dataset
        cfg = _config_for(index, None, create=False)
        queries, train_q = _judged(dataset, split)
        evaluation: dict[str, str] = {}
        eval_qrels = None
        for es in eval_split:
            _, qr = _judged(dataset, es)
            evaluation.update({q: queries[q] for q in qr if q in queries})
            eval_qrels = eval_qrels if eval_qrels is not None else qr
        dropped = emb.check_not_eval({q: queries[q] for q in train_q if q in queries}, evaluation, split, eval_split)
        train_q = {q: v for q, v in train_q.items() if q not in dropped}
        if max_queries and max_queries < len(train_q):
            keep = random.Random(seed).sample(sorted(train_q), max_queries)
            train_q = {q: train_q[q] for q in keep}
        prof = teacher or cfg.default_profile
        opened = open_index(cfg, s, profiles=[prof])
        with _progress() as prog:
            task = prog.add_task(f"teacher {prof} ranks {len(train_q)} {dataset} {split} queries", total=len(train_q))
            try:
                groups, mined = asyncio.run(emb.mine(
                    opened.cascade(prof), queries, train_q, pairs_per_query=pairs, seed=seed,
                    embed_fields=cfg.embedder.fields, on_progress=lambda d, t: prog.update(task, completed=d)))
            finally:
                asyncio.run(opened.close())
        err.print(f"{mined['pairs']} training pairs from {mined['queries']} queries (teacher stage "
                  f"{mined['teacher_stage']}, {mined['window']:.0f} documents scored per query; {len(dropped)} "
                  f"training queries left out as evaluation queries)")
        target = _resolve_out(out)
        with _progress() as prog:
            task = prog.add_task("distilling", total=None)
            res = emb.distill(cfg.embedder.model, groups, target, s,
                              max_length=max_length or cfg.embedder.max_length or 256,
                              batch=batch, epochs=epochs, learning_rate=learning_rate, seed=seed, max_steps=max_steps,
                              data={"dataset": dataset, "split": split, "index": index, "teacher": prof,
                                    "queries": mined["queries"], "dropped_eval_queries": len(dropped),
                                    "eval_splits": eval_split, "retrained_ltr": retrain_ltr},
                              on_step=lambda k, n, loss: prog.update(task, completed=k, total=n,
                                                                     description=f"distilling (loss {loss:.4f})"))
        err.print(f"trained {res.steps} steps on {res.pairs} pairs in {res.seconds / 60:.1f} min; margin-MSE "
                  f"{res.first_loss:.4f} -> {res.last_loss:.4f}; wrote {res.folder}")
        name = new_index or f"{cfg.index}-distilled"
        with _progress() as prog:
            task = prog.add_task(f"embedding the corpus into {name}", total=None)
            new_cfg, path = emb.reembed(cfg, res.folder, name, corpus_file(_dataset_dir(dataset)), s,
                                        on_progress=lambda st, d, t: prog.update(task, completed=d, total=t))
        err.print(f"built index {name}; its config: {path}")
        if retrain_ltr:
            new_cfg = _retrain_ltr(dataset, split, new_cfg, path, dropped)
        result = _before_after(cfg, new_cfg, dataset, eval_split[0], eval_qrels or {}, queries, eval_limit,
                               {"training": res.meta, "mined": mined, "seconds": 0.0})
        result.seconds = time.perf_counter() - t0
    except CascadeError as exc:
        _fail(exc)
        return
    _finish(result, report, json_out)


def _retrain_ltr(dataset: str, split: str, cfg: Any, path: Path, exclude: set[str]) -> Any:
    """The LTR model of the new index version, trained on its features of the training queries (less
    ``exclude``, the evaluation queries)."""
    from cascade.bench.learning import relabel
    from cascade.cli.common import _judged
    from cascade.cli.train import _log_features
    from cascade.config import dump_config, parse_config
    from features.training.ltr import train_ltr

    s = _settings()
    log = s.trained_dir / "logs" / f"{cfg.index}-{split}.parquet"
    _log_features(dataset, split, cfg.index, log, None, None)
    _, qrels = _judged(dataset, split)
    relabel(log, {q: v for q, v in qrels.items() if q not in exclude}, log)  # left-out queries: no positive
    model = s.trained_dir / f"{cfg.index}-ltr"
    train_ltr([log], model)
    data = cfg.model_dump(mode="json")
    for prof in [data] + list((data.get("profiles") or {}).values()):
        for st in prof.get("stages") or []:
            if isinstance(st, dict) and st.get("type") == "ltr":
                st["model"] = str(model)
    new = parse_config(data, path.name)
    path.write_text(dump_config(new), encoding="utf-8")
    err.print(f"retrained the LTR model on {cfg.index}: {model}")
    return new


def _finish(result: Any, report: Optional[Path], json_out: Optional[Path]) -> None:
    """A benchmark's tables, its section in ``report`` and its JSON."""
    from cascade.bench.experiments import write_json
    from cascade.cli.common import _write_section

    for t in result.tables():
        console.print(t)
    if report:
        _write_section(report, result)
    write_json(json_out, result.as_json())


def _before_after(old: Any, new: Any, dataset: str, split: str, qrels: dict, queries: dict, limit: Optional[int],
                  extra: dict[str, Any]) -> Any:
    from cascade.bench.learning import DistillResult
    from cascade.builder import open_index
    from cascade.evaluation import evaluate

    reports = {}
    for label, cfg in (("before", old), ("after", new)):
        opened = open_index(cfg, _settings(), profiles=[cfg.default_profile])
        n = min(limit or len(qrels), len(qrels))
        with _progress() as prog:
            task = prog.add_task(f"evaluating {cfg.index} on {dataset} {split}", total=n)
            try:
                reports[label] = asyncio.run(evaluate(opened.cascade(), queries, qrels, dataset=dataset, split=split,
                                                      limit=limit, on_progress=lambda d, t: prog.update(task, completed=d)))
            finally:
                asyncio.run(opened.close())
    return DistillResult(dataset, split, old.index, new.index, reports["before"].as_json(),
                         reports["after"].as_json(), extra)


def register(train_app: typer.Typer, features_app: typer.Typer | None = None) -> None:
    """``cascade train labels`` and ``cascade train embedder`` (and ``cascade features log-impressions``)."""
    train_app.command("labels")(train_labels)
    train_app.command("embedder")(train_embedder)
    if features_app is not None:
        features_app.command("log-impressions")(log_impressions_cmd)


def _subset_log(log: Any, cols: list[str], out: Path) -> None:
    from features.logging import write_log

    idx = [log.names.index(c) for c in cols]
    write_log(out, {"qid": list(log.qids), "doc_id": list(log.doc_ids), "label": [int(x) for x in log.labels],
                    "fusion_rank": [int(x) for x in log.fusion_rank]}, log.x[:, idx],
              {**log.meta, "feature_names": cols})
