"""The learning benchmarks (docs/learning.md, docs/benchmarks.md): ``bench-click-labels`` (simulated
position-biased users through a real service, labels debiased by each estimator, LTR trained on each) and
``bench-personal`` (segments of simulated users, popularity and personal features trained point in time).
Kept apart from :mod:`cascade.cli.learning`, whose commands a user runs on real traffic.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Optional

import typer

from cascade.cli.common import _config_for, _dataset_dir, _fail, _progress, _settings, _setup, err
from cascade.cli.learning import _finish, _subset_log
from cascade.errors import CascadeError

def _feature_log(dataset: str, split: str, index: str, name: str) -> Path:
    """The index's feature log of a split under CASCADE_TRAINED_DIR/logs (written once, then reused)."""
    from cascade.cli.train import _log_features

    path = _settings().trained_dir / "logs" / f"{name}-{split}.parquet"
    if not path.is_file():
        _log_features(dataset, split, index, path, None, None)
    return path


def bench_click_labels(
    dataset: str = typer.Option("scifact", help="BEIR dataset (its index built): users ask its train queries."),
    index_name: Optional[str] = typer.Option(None, "--index"),
    arms: str = typer.Option("fusion,lexical", help="Two profiles an A/B experiment serves (both randomized)."),
    share: float = typer.Option(0.1, min=0.0, max=1.0, help="RandPair: share of impressions with a swapped pair."),
    impressions: int = typer.Option(100_000, min=100, help="Simulated searches through the service."),
    eta: float = typer.Option(1.0, help="Position bias of the simulated users: examination (1/k)^eta."),
    epsilon: float = typer.Option(0.1, help="Click probability of an examined non-relevant result."),
    workers: int = typer.Option(2, min=1, help="Concurrent simulated-user loops."),
    seed: int = typer.Option(0),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
    plot: Optional[Path] = typer.Option(None, help="Estimated propensities against the simulator's."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
) -> None:
    """Clicks to labels to LTR: simulated position-biased users through the service, labels debiased by each
    estimator, LightGBM trained on each (train queries), nDCG@10 on test."""
    _setup()
    from cascade.bench.learning import (ClickLabelsResult, judged_queries, ltr_test_ndcg, play, propensity_plot,
                                        relabel, serve_configs)
    from cascade.cli.common import _judged
    from cascade.config import parse_config
    from cascade.experiments.clicks import model as click_model
    from cascade.experiments.simulate import Design
    from features.training import labels as lab
    from features.training.ltr import train_ltr

    t0 = __import__("time").perf_counter()
    try:
        index = index_name or dataset
        cfg = _config_for(index, None, create=False)
        pair = [a.strip() for a in arms.split(",") if a.strip()]
        for a in pair:
            cfg.profile(a)
        queries, train_q = _judged(dataset, "train")
        _, test_q = _judged(dataset, "test")
        held = lab.known_ids({q: queries[q] for q in test_q})
        ids = lab.known_ids(queries)
        # Train queries whose text is a test query's (SciFact has two) are evaluation queries too: left out.
        same = {q for q in train_q if lab.normalize_query(queries.get(q, "")) in held}
        train_q = {q: v for q, v in train_q.items() if q not in same}
        train_log = _feature_log(dataset, "train", index, index)
        test_log = _feature_log(dataset, "test", index, index)
        data = cfg.model_dump(mode="json")
        data["experiments"] = {"clicks": {"mode": "ab", "arms": pair, "salt": f"clicks-{seed}",
                                          "randomize": {"method": "randpair", "share": share}}}
        served = serve_configs({index: parse_config(data, f"{index}.yaml")})
        try:
            users = click_model("pbm", eta=eta, epsilon=epsilon)
            judged = judged_queries(queries, train_q)
            with _progress() as prog:
                task = prog.add_task(f"{impressions:,} searches through the service", total=impressions)
                traffic = play(served.url, index, judged, Design("ab", pair, f"clicks-{seed}"), users, impressions,
                               workers=workers, seed=seed,
                               on_progress=lambda d, t: prog.update(task, completed=d))
            log = asyncio.run(lab.read_stream(served.redis_url, index))
        finally:
            served.stop()
        if lab.holdout_overlap(log.queries, held):
            raise CascadeError("the simulated traffic asked test queries; refusing to train on them")
        truth = users.examination(10)
        feats, has = lab.pair_features(log, train_log, ids)
        props = {name: lab.estimate(log, name, 10, features=feats, has_features=has)
                 for name in ("harvest", "randpair", "em", "regression-em")}
        oracle = lab.Propensities("simulator", truth / truth[0])
        label_sets = {"IPW, harvest propensities": ("ipw", props["harvest"]),
                      "IPW, randpair propensities": ("ipw", props["randpair"]),
                      "IPW, EM propensities": ("ipw", props["em"]),
                      "IPW, regression-EM propensities": ("ipw", props["regression-em"]),
                      "IPW, the simulator's propensities": ("ipw", oracle),
                      "COEC": ("coec", None), "raw CTR": ("ctr", None)}
        work = _settings().trained_dir / "click-labels"
        models = []
        p = relabel(train_log, train_q, work / "true.parquet")
        res = train_ltr([work / "true.parquet"], work / "ltr-true")
        models.append({"name": "true qrels", "labels": "train qrels", "positives": p,
                       "ndcg": ltr_test_ndcg(res.folder, test_log, test_q)})
        with _progress() as prog:
            task = prog.add_task("labels -> LTR -> test nDCG@10", total=len(label_sets))
            for n, (name, (method, pr)) in enumerate(label_sets.items()):
                labels = lab.click_labels(log, method, propensities=pr)
                out = work / f"labels-{n}.tsv"
                lab.write_labels(labels, out, ids, {"bench": name})
                qrels, _ = lab.read_qrels_file(out)  # what `cascade features log --qrels` reads
                p = relabel(train_log, qrels, work / f"labels-{n}.parquet")
                try:
                    res = train_ltr([work / f"labels-{n}.parquet"], work / f"ltr-{n}")
                    ndcg = ltr_test_ndcg(res.folder, test_log, test_q)
                except CascadeError:  # e.g. no positive label at all: nothing learned, the test says so
                    ndcg = 0.0
                models.append({"name": name, "labels": method, "positives": p, "ndcg": ndcg,
                               "noise_floor": labels.detail["noise_floor"]})
                prog.update(task, advance=1)
    except (CascadeError, ValueError, RuntimeError) as exc:
        _fail(exc)
        return
    result = ClickLabelsResult(
        dataset, pair, share, f"pbm eta={eta:g} epsilon={epsilon:g}", traffic,
        {"impressions": log.impressions, "clicks": log.clicks, "randomized": int((log.swap > 0).sum()),
         "pairs": len(log.pairs)},
        [round(float(x), 5) for x in truth / truth[0]],
        {k: [round(float(x), 5) for x in v.values] for k, v in props.items()}, models,
        __import__("time").perf_counter() - t0,
        ["Labels: smoothed clicks per expected examination, (clicks + 5 mu) / (sum of weights + 5), for pairs "
         "with at least 10 impressions, graded 0-4 evenly above the noise floor (the median pair's estimate); the "
         "weights are the propensities (IPW), the rank's CTR over rank 1's (COEC) or 1 (raw CTR).",
         f"Test queries never reach the traffic or the labels; the models are trained on train queries only "
         f"({len(same)} train queries whose text is a test query's are left out of every model)."])
    _finish(result, report, json_out)
    if plot:
        err.print(f"wrote {propensity_plot(plot, result.propensities, result.truth)}")


def _topic_collection(dataset: str, index: str, k: int, name: str) -> tuple[Any, dict[str, str], Path]:
    """A copy of the collection with a ``topic`` keyword field (k-means clusters of the index's embeddings),
    under CASCADE_TRAINED_DIR/datasets, and its index built (once)."""
    import gzip
    import json

    import numpy as np

    from cascade.bench.learning import cluster_corpus
    from cascade.builder import open_index
    from cascade.config import parse_config
    from cascade.datasets import corpus_file, count_lines, iter_corpus
    from connectors.embedded import build_index, index_exists

    s = _settings()
    cfg = _config_for(index, None, create=False)
    src = _dataset_dir(dataset)
    folder = s.trained_dir / "datasets" / name
    topics_file = folder / "topics.json"
    if not topics_file.is_file():
        opened = open_index(cfg, s, profiles=[], stages=False)
        try:
            labels = cluster_corpus(np.asarray(opened.backend.vectors), k)
            topic = {d: f"t{int(c)}" for d, c in zip(opened.backend.ids, labels)}
        finally:
            asyncio.run(opened.close())
        (folder / "qrels").mkdir(parents=True, exist_ok=True)
        with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as fh:
            for _, rec in iter_corpus(corpus_file(src)):
                fh.write(json.dumps({**rec, "topic": topic.get(rec["_id"], "")}, ensure_ascii=False) + "\n")
        (folder / "queries.jsonl").write_bytes((src / "queries.jsonl").read_bytes())
        for q in (src / "qrels").glob("*.tsv"):
            (folder / "qrels" / q.name).write_bytes(q.read_bytes())
        topics_file.write_text(json.dumps(topic))
    topic = json.loads(topics_file.read_text())
    data = cfg.model_dump(mode="json")
    data.update(index=name, profiles={}, stages=[], description=f"{cfg.index} with k-means topics")
    data["fields"]["topic"] = {"type": "keyword"}
    new = parse_config(data, f"{name}.yaml")
    if index_exists(new, s) is None:
        path = corpus_file(folder)
        with _progress() as prog:
            task = prog.add_task(f"building {name}", total=count_lines(path))
            build_index(new, iter_corpus(path), s, source=str(path),
                        on_progress=lambda st, d, t: prog.update(task, completed=d))
    return new, topic, folder


def bench_personal(
    dataset: str = typer.Option("scifact", help="BEIR dataset (its index built): users ask its train queries."),
    index_name: Optional[str] = typer.Option(None, "--index"),
    segments: int = typer.Option(4, min=2, max=16, help="Segments (and corpus clusters)."),
    per_segment: int = typer.Option(40, min=1, help="Users per segment."),
    anonymous: float = typer.Option(0.2, min=0.0, max=0.9, help="Share of anonymous searches."),
    impressions: int = typer.Option(6000, min=100, help="Simulated searches through the service."),
    every: int = typer.Option(2, min=1, help="Train on every N-th logged search."),
    eta: float = typer.Option(1.0),
    epsilon: float = typer.Option(0.1),
    workers: int = typer.Option(2, min=1),
    seed: int = typer.Option(0),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
) -> None:
    """Segments of simulated users with different tastes through the service; LTR with and without popularity and
    personal features trained on the replayed (point-in-time) log; nDCG@10 per segment on test, and latency."""
    _setup()
    import time

    from cascade.bench.learning import Population, play_population, segment_grades, serve_configs
    from cascade.builder import open_cascade, open_index
    from cascade.cli.common import _judged
    from cascade.config import parse_config
    from cascade.experiments.clicks import model as click_model
    from cascade.text import normalize_query
    from connectors.events import connect, iterate
    from features.personal import BehaviorConsumer, DocValues
    from features.training.impressions import log_impressions, static_config, with_anonymous_copies
    from features.training.labels import known_ids
    from features.training.ltr import load_logs, train_ltr

    t0 = time.perf_counter()
    s = _settings()
    name = f"{dataset}-topics"
    try:
        index = index_name or dataset
        base, topic, folder = _topic_collection(dataset, index, segments, name)
        queries, train_q = _judged(dataset, "train")
        _, test_q = _judged(dataset, "test")
        held = known_ids({q: queries[q] for q in test_q})
        train_q = {q: v for q, v in train_q.items() if normalize_query(queries[q]) not in held}
        segs = [f"t{i}" for i in range(segments)]
        ft = base.features.model_dump(mode="json")
        full = {**ft, "popularity": {"half_lives_days": [1.0, 30.0]}, "personal": {"field": "topic",
                                                                                     "segment": "segment"}}
        data = base.model_dump(mode="json")
        data["features"] = full
        cfg = parse_config(data, f"{name}.yaml")
        # Candidates per query (for the segments' grades): the fused list every model re-ranks.
        static = open_cascade(static_config(cfg), s, stages=False)
        cands: dict[str, list[str]] = {}

        async def candidates_of(qids: list[str]) -> None:
            from cascade.query import Query

            for q in qids:
                c, _ = await static.candidates(static.validate(Query(text=queries[q], size=10)))
                cands[q] = list(c.ids)

        with _progress() as prog:
            task = prog.add_task("candidates of train and test queries", total=None)
            asyncio.run(candidates_of(list(train_q) + list(test_q)))
            prog.update(task, completed=1, total=1)
        grades = {sg: segment_grades({**train_q, **test_q}, topic, sg, cands) for sg in segs}
        pop = Population.make(segs, per_segment, anonymous)
        users = click_model("pbm", eta=eta, epsilon=epsilon)
        texts = [(q, normalize_query(queries[q])) for q in train_q]
        from cascade.experiments.traffic import TempRedis

        own = None if s.redis_url else TempRedis().start()  # the aggregates outlive the first service
        redis_url = s.redis_url or own.url  # type: ignore[union-attr]
        served = serve_configs({name: cfg}, redis_url=redis_url)
        try:
            with _progress() as prog:
                task = prog.add_task(f"{impressions:,} searches of {len(pop.users)} users", total=impressions)
                traffic, hidden = play_population(served.url, name, "default", texts, pop, grades, users, impressions,
                                                  workers=workers, seed=seed,
                                                  on_progress=lambda d, t: prog.update(task, completed=d))
            opened = open_index(cfg, s, profiles=[], stages=False)
            values = DocValues(opened.backend.fetch, "topic")
            consumer = BehaviorConsumer(name, served.redis_url, cfg.features.popularity, cfg.features.personal, values)
            asyncio.run(_drain(consumer))
            full_ex = opened_full = open_index(cfg, s, stages=False).cascade().features
            group = next(g for g in opened_full.groups if getattr(g, "behavioral", False))
            ids = known_ids(queries)

            def label(rec: dict[str, Any], docs: list[str]) -> list[int]:
                g = grades[hidden.get(rec["query_id"], segs[0])].get(ids.get(normalize_query(rec["user_query"]), ""), {})
                return [int(g.get(d, 0)) for d in docs]

            work = s.trained_dir / "personal"
            with _progress() as prog:
                task = prog.add_task("replaying the stream into a training log", total=impressions // every)

                async def make_log() -> dict[str, Any]:
                    c = connect(served.redis_url)
                    try:
                        return await log_impressions(static, group, iterate(c), values, work / "impressions.parquet",
                                                     features=full_ex, labels=label, every=every,
                                                     on_progress=lambda n: prog.update(task, completed=n))
                    finally:
                        await c.aclose()

                stats = asyncio.run(make_log())
            log = load_logs([work / "impressions.parquet"])
            variants = {"static": [n for n in log.names if not n.startswith(("pop.", "pers."))],
                        "popular": [n for n in log.names if not n.startswith("pers.")], "personal": list(log.names)}
            models = {}
            for v, cols in variants.items():  # the personal model also sees every search as anonymous
                _subset_log(with_anonymous_copies(log) if v == "personal" else log, cols, work / f"{v}.parquet")
                models[v] = train_ltr([work / f"{v}.parquet"], work / f"ltr-{v}").folder
            # Phase 2: the same service, its profiles now ranking with the three models.
            profiles = {}
            for v, cols in variants.items():
                fv = dict(full)
                if v != "personal":
                    fv["personal"] = None
                if v == "static":
                    fv["popularity"] = None
                profiles[v] = {"inherit": "default", "features": fv,
                               "stages": [{"type": "ltr", "model": str(models[v]), "keep": 100}]}
            data2 = cfg.model_dump(mode="json")
            data2["profiles"] = profiles
            cfg2 = parse_config(data2, f"{name}.yaml")
            served.stop()
            result = _evaluate_personal(cfg2, name, queries, test_q, grades, pop, stats, every, traffic, redis_url,
                                        topic, segs, f"pbm eta={eta:g} epsilon={epsilon:g}", workers)
        finally:
            served.stop()
            if own is not None:
                own.stop()
        result.seconds = time.perf_counter() - t0
    except (CascadeError, ValueError, RuntimeError) as exc:
        _fail(exc)
        return
    _finish(result, report, json_out)


async def _drain(consumer: Any) -> None:
    try:
        await consumer.drain()
    finally:
        await consumer.close()


def _evaluate_personal(cfg: Any, name: str, queries: dict, test_q: dict, grades: dict, pop: Any, stats: dict,
                       every: int, traffic: dict, redis_url: str, topic: dict, segs: list[str], user: str,
                       workers: int) -> Any:
    """The three models through the service on the test queries: per segment (users with history, and the
    segment attribute alone), and anonymous; then the behaviour features' added time in process."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from cascade.bench.learning import PersonalResult, ndcg, serve_configs
    from cascade.text import normalize_query

    served = serve_configs({name: cfg}, redis_url=redis_url)
    texts = [(q, normalize_query(queries[q])) for q in test_q if normalize_query(queries[q])]
    asks: list[tuple[str, str, str, str | None, str | None]] = []  # (run, qid, profile, user, segment)
    for i, (q, _) in enumerate(texts):
        asks += [("static", q, "static", None, None), ("popular", q, "popular", None, None),
                 ("personal", q, "personal", None, None)]
        for sg in segs:
            asks += [(f"history:{sg}", q, "personal", f"{sg}-u{i % 2}", sg),
                     (f"segment:{sg}", q, "personal", f"new-{sg}", sg)]
    runs: dict[str, dict[str, list[str]]] = {}
    text = dict(texts)
    try:
        def ask(part: list[tuple[str, str, str, str | None, str | None]]) -> list[tuple[str, str, list[str]]]:
            out = []
            with httpx.Client(timeout=120) as client:
                for run, q, prof, u, sg in part:
                    body: dict[str, Any] = {"query": text[q], "size": 10, "profile": prof}
                    if u:
                        body.update(user_id=u, user_attributes={"segment": sg})
                    r = client.post(f"{served.url}/v1/indexes/{name}/search", json=body)
                    r.raise_for_status()
                    out.append((run, q, [h["id"] for h in r.json()["hits"]]))
            return out

        with _progress() as prog:
            task = prog.add_task(f"{len(asks):,} test searches", total=workers)
            with ThreadPoolExecutor(workers) as pool:
                for got in pool.map(ask, [asks[w::workers] for w in range(workers)]):
                    for run, q, ids in got:
                        runs.setdefault(run, {})[q] = ids
                    prog.update(task, advance=1)
    finally:
        served.stop()
    seg_rows = []
    for sg in segs:
        g = {q: v for q, v in grades[sg].items() if q in test_q}
        seg_rows.append({"segment": sg, "static": ndcg(runs["static"], g), "popular": ndcg(runs["popular"], g),
                         "personal": ndcg(runs[f"history:{sg}"], g), "segment_only": ndcg(runs[f"segment:{sg}"], g)})
    no_history = {m: ndcg(runs[m], test_q) for m in ("static", "popular", "personal")}
    latency = _behaviour_latency(cfg, redis_url, texts, segs)
    sizes = Counter(topic.values())
    return PersonalResult(name, {k: sizes[k] for k in sorted(sizes)},
                          {"segments": segs, "per_segment": len(pop.users) // len(segs), "anonymous": pop.anonymous,
                           "user": user, "test_queries": len(texts)}, traffic,
                          {**stats, "every": every}, seg_rows, no_history, latency)


def _behaviour_latency(cfg: Any, redis_url: str, texts: list[tuple[str, str]], segs: list[str]) -> dict[str, Any]:
    """What the behaviour features add to the features step for 200 candidates, in process against the same
    Redis: the ``personal`` profile's features step beside the ``static`` one's on the same candidates (stored
    fields already fetched, so the Redis read is not hidden behind that fetch), alternating, per search."""
    import time

    from cascade.bench.common import pct
    from cascade.builder import open_index
    from cascade.query import Query
    from cascade.settings import Settings

    s = Settings(**{**_settings().model_dump(), "redis_url": redis_url})
    opened = open_index(cfg, s, profiles=["static", "personal"], stages=False)
    static, personal = opened.cascade("static"), opened.cascade("personal")
    times: dict[str, list[float]] = {"static": [], "personal": [], "added": [], "read": [], "compute": []}
    group = next(g for g in personal.features.groups if getattr(g, "behavioral", False))

    async def measure() -> None:
        from features.context import FeatureContext

        for i, (_, text) in enumerate(texts[:220]):
            sg = segs[i % len(segs)]
            q = personal.validate(Query(text=text, user_id=f"{sg}-u0", user_attributes={"segment": sg}))
            c, _ = await personal.candidates(q, features=False)
            await personal._fill_fields(c, 0, len(c))
            spent = {}
            for name, casc in (("static", static), ("personal", personal)):
                a = time.perf_counter()
                await casc.features.run(q, c.take(range(len(c))))
                spent[name] = (time.perf_counter() - a) * 1e3
            a = time.perf_counter()
            memo, _ = await group.prefetch(q, c)
            b = time.perf_counter()
            group.compute(FeatureContext(q, c, None, memo))
            e = time.perf_counter()
            if i >= 20:  # the first searches warm the connection pool and the caches
                times["static"].append(spent["static"])
                times["personal"].append(spent["personal"])
                times["added"].append(spent["personal"] - spent["static"])
                times["read"].append((b - a) * 1e3)
                times["compute"].append((e - b) * 1e3)

    try:
        asyncio.run(measure())
    finally:
        asyncio.run(opened.close())
    out: dict[str, Any] = {"searches": len(times["added"]), "candidates": 200}
    for k, v in times.items():
        out[f"{k}_p50_ms"], out[f"{k}_p99_ms"] = round(pct(v, 50), 3), round(pct(v, 99), 3)
    import os

    out["load_average"] = round(os.getloadavg()[0], 1)
    return out
