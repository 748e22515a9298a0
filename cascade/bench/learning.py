"""The learning benchmarks behind ``cascade bench-click-labels``, ``bench-personal`` and ``bench-distill``.

Simulated users (the click models of :mod:`cascade.experiments.clicks`) play
against a real ``cascade serve`` (its own process, a Redis, searches then UBI
events over HTTP); what they leave in the event stream is all the learning
side gets. Models are judged on the test split, which no step trains or tunes
on (the CLI refuses it).
"""

from __future__ import annotations

import secrets
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from rich.table import Table

from cascade.bench.common import BenchResult, head_lines, pct
from cascade.plots import save_figure


# ---------------------------------------------------------------- simulated traffic through the service


@dataclass
class Served:
    """A running ``cascade serve`` over a config folder, with the Redis its events go to."""

    url: str
    redis_url: str
    stop: Callable[[], None]


def serve_configs(configs: Mapping[str, Any], env: Mapping[str, str] | None = None,
                  redis_url: str | None = None) -> Served:
    """Write ``configs`` (index name -> IndexConfig) to a folder and start ``cascade serve`` on them, with
    ``redis_url``, CASCADE_REDIS_URL or a throwaway redis-server (stopped with the service); every search
    logged, backlog bounds raised for a burst."""
    from cascade.config import dump_config
    from cascade.experiments.traffic import ServiceProcess, TempRedis
    from cascade.settings import get_settings

    s = get_settings()
    redis = None if (redis_url or s.redis_url) else TempRedis().start()
    redis_url = redis_url or s.redis_url or redis.url  # type: ignore[union-attr]
    folder = Path(tempfile.mkdtemp(prefix="cascade-learning-"))
    for name, cfg in configs.items():
        (folder / f"{name}.yaml").write_text(dump_config(cfg))
    service = ServiceProcess(folder, env={"CASCADE_REDIS_URL": redis_url, "CASCADE_EVENTS_LOG_QUERIES": "all",
                                          "CASCADE_EVENTS_MAX_BACKLOG": "2000000",
                                          "CASCADE_EVENTS_RETENTION": "5000000",
                                          "CASCADE_ADMIN_API_KEY": secrets.token_hex(8), **(env or {})})
    try:
        service.start()
    except BaseException:
        if redis is not None:
            redis.stop()
        raise

    def stop() -> None:
        service.stop()
        if redis is not None:
            redis.stop()

    return Served(service.url, redis_url, stop)


def play(url: str, index: str, judged: Any, design: Any, user_model: Any, impressions: int, *, workers: int = 2,
         seed: int = 0, on_progress: Callable[[int, int], None] | None = None,
         traffic_cls: Any = None) -> dict[str, Any]:
    """``impressions`` simulated searches and their clicks through the service, by ``workers`` concurrent users
    loops (seeds ``seed``, ``seed + 1``, ...); returns latencies and counts."""
    from cascade.experiments.simulate import run_stream
    from cascade.experiments.traffic import HttpTraffic

    cls = traffic_cls or HttpTraffic
    done = [0]
    per = [impressions // workers + (1 if w < impressions % workers else 0) for w in range(workers)]

    def worker(w: int) -> Any:
        traffic = cls(url, index, list(design.arms), impressions=False)

        def after(i: int, *args: Any) -> None:
            traffic.post_events(i, *args)
            done[0] += 1
            if on_progress and done[0] % 50 == 0:
                on_progress(done[0], impressions)

        run_stream(judged, design, user_model, seed + w, max_impressions=per[w], look_every=max(per[w], 1),
                   stop=False, serve=traffic.serve, on_impression=after)
        traffic.client.close()
        return traffic

    return _concurrently(worker, workers, impressions)


def _concurrently(worker: Callable[[int], Any], workers: int, impressions: int) -> dict[str, Any]:
    """Run ``worker(w)`` (each returns its HttpTraffic) for ``w < workers`` in threads; their traffic stats."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        traffics = list(pool.map(worker, range(workers)))
    seconds = time.perf_counter() - t0
    search_ms = [x for t in traffics for x in t.search_ms]
    return {"impressions": impressions, "workers": workers, "seconds": round(seconds, 1),
            "searches_per_s": round(impressions / seconds, 1) if seconds else 0.0,
            "search_p50_ms": round(pct(search_ms, 50), 2), "search_p99_ms": round(pct(search_ms, 99), 2),
            "events": sum(t.events_sent for t in traffics), "retries": sum(t.retries for t in traffics)}


def judged_queries(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]) -> Any:
    """What simulated users need for a split: its judged queries (normalized text) and grades on 0..4."""
    from cascade.experiments.clicks import grade_scale
    from cascade.experiments.simulate import Judged
    from cascade.text import normalize_query

    texts = [(q, normalize_query(queries[q])) for q in qrels if q in queries and normalize_query(queries[q])]
    return Judged(texts, grade_scale({q: dict(qrels[q]) for q, _ in texts}), {})


# ---------------------------------------------------------------- LTR from labels, judged on test


def relabel(log: Path, qrels: Mapping[str, Mapping[str, int]], out: Path) -> int:
    """A copy of a feature log with its labels from ``qrels`` (the same candidates and features: only the
    judgments differ between the models compared). Returns the number of positive rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(log)
    labels = [int(qrels.get(q, {}).get(d, 0)) for q, d in zip(t.column("qid").to_pylist(), t.column("doc_id").to_pylist())]
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels, pa.int64()))
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, out)
    return sum(x > 0 for x in labels)


def ltr_test_ndcg(model_dir: Path, test_log: Path, qrels: Mapping[str, Mapping[str, int]]) -> float:
    """nDCG@10 on the test queries of the model's order of the logged test candidates (the ``ltr`` profile's
    ranking: LTR over the fused candidates); a judged query without candidates counts 0."""
    import ir_measures
    import lightgbm as lgb
    from ir_measures import nDCG

    from features.training.ltr import _run, load_logs

    data = load_logs([test_log])
    scores = lgb.Booster(model_file=str(model_dir / "model.txt")).predict(data.x)
    m = nDCG @ 10
    return float(ir_measures.calc_aggregate([m], dict(qrels), _run(data, qrels, scores))[m])


def propensity_plot(path: Path, curves: Mapping[str, Sequence[float]], truth: Sequence[float] | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, v in curves.items():
        ax.plot(range(1, len(v) + 1), v, marker="o", label=name)
    if truth is not None:
        ax.plot(range(1, len(truth) + 1), truth, "k--", label="simulator (1/k)^eta")
    ax.set_xlabel("rank")
    ax.set_ylabel("examination propensity (rank 1 = 1)")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("position bias estimated from the logs")
    return save_figure(fig, path)


@dataclass
class ClickLabelsResult(BenchResult):
    dataset: str
    arms: list[str]
    share: float
    user: str
    traffic: dict[str, Any]
    log: dict[str, Any]
    truth: list[float]
    propensities: dict[str, list[float]]  # estimator -> values
    models: list[dict[str, Any]]  # name, labels, positives, ndcg
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def errors(self, name: str) -> list[float]:
        t = np.asarray(self.truth)
        return list(np.abs(np.asarray(self.propensities[name][: len(t)]) - t) / t)

    def as_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "arms": self.arms, "randpair_share": self.share, "user": self.user,
                "traffic": self.traffic, "log": self.log, "truth": self.truth, "propensities": self.propensities,
                "max_relative_error": {k: round(max(self.errors(k)[1:]), 4) for k in self.propensities},
                "models": self.models, "seconds": round(self.seconds, 1)}

    def ref(self) -> float:
        return next(m["ndcg"] for m in self.models if m["name"] == "true qrels")

    def table(self) -> Table:
        t = Table(title=f"{self.dataset}: LTR from simulated clicks, nDCG@10 on test")
        for c, j in (("labels", "left"), ("positives", "right"), ("nDCG@10", "right"), ("of true", "right")):
            t.add_column(c, justify=j, no_wrap=True)
        for m in self.models:
            t.add_row(m["name"], f"{m['positives']:,}", f"{m['ndcg']:.4f}", f"{m['ndcg'] / self.ref():.1%}")
        return t

    def tables(self) -> list[Table]:
        p = Table(title="propensity by rank (rank 1 = 1): estimate and relative error")
        p.add_column("rank", justify="right")
        p.add_column("sim.", justify="right")
        for name in self.propensities:
            p.add_column(name, justify="right", no_wrap=True)
        for k in range(len(self.truth)):
            p.add_row(str(k + 1), f"{self.truth[k]:.3f}",
                      *[f"{v[k]:.3f} {self.errors(n)[k]:.0%}" for n, v in self.propensities.items()])
        return [p, self.table()]

    def section(self) -> tuple[str, str]:
        return f"click-labels-{self.dataset}", f"LTR from clicks: position-debiased labels on {self.dataset}"

    def markdown(self, command: str, machine: str) -> str:
        tr = self.traffic
        lines = [*head_lines(command, machine),
                 f"{tr['impressions']:,} simulated searches of {self.dataset} train queries through `cascade serve` "
                 f"(own process, Redis, {tr['workers']} client loops; {tr['searches_per_s']} searches/s, search p50 "
                 f"{tr['search_p50_ms']} ms): an A/B experiment between the `{self.arms[0]}` and `{self.arms[1]}` "
                 f"profiles with RandPair on {self.share:.0%} of impressions (one random adjacent pair of the top 10 "
                 f"swapped). Position-based users ({self.user}): rank k examined with probability (1/k)^eta, a "
                 f"relevant result clicked when examined, a non-relevant one with probability epsilon. "
                 f"{self.log['impressions']:,} logged impressions, {self.log['clicks']:,} clicks, "
                 f"{self.log['randomized']:,} swapped. {self.seconds:.0f} s in all.", "",
                 "Estimated propensity per rank (rank 1 = 1) and its relative error against the simulator's:", "",
                 "| rank | simulator | " + " | ".join(self.propensities) + " |",
                 "|---:|---:|" + "---:|" * len(self.propensities)]
        for k in range(len(self.truth)):
            lines.append(f"| {k + 1} | {self.truth[k]:.3f} | " + " | ".join(
                f"{v[k]:.3f} ({self.errors(n)[k]:.1%})" for n, v in self.propensities.items()) + " |")
        lines.append("| max error, ranks 2-10 | | " + " | ".join(
            f"**{max(self.errors(n)[1:]):.1%}**" for n in self.propensities) + " |")
        lines += ["", "LightGBM lambdarank models (same candidates, features, parameters and seed; only the labels "
                      "differ) ranking the fused candidates of the test queries:", "",
                  "| labels | positive (query, doc) rows | nDCG@10 (test) | of the true-qrels model |",
                  "|---|---:|---:|---:|"]
        for m in self.models:
            lines.append(f"| {m['name']} | {m['positives']:,} | {m['ndcg']:.4f} | {m['ndcg'] / self.ref():.1%} |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- distillation


def _steps(report: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the kNN retriever's step, the last step) of an evaluation report."""
    knn = next((s for s in report["stages"] if s["kind"] == "retriever" and "knn" in s["name"]), None)
    return knn, report["stages"][-1]


@dataclass
class DistillResult(BenchResult):
    dataset: str
    split: str
    before_index: str
    after_index: str
    before: dict[str, Any]
    after: dict[str, Any]
    extra: dict[str, Any]
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "before": self.before, "after": self.after,
                **self.extra, "seconds": round(self.seconds, 1)}

    def rows(self) -> list[tuple[str, str, str, str]]:
        kb, lb = _steps(self.before)
        ka, la = _steps(self.after)
        out = []
        if kb and ka:
            out += [("kNN recall@100", f"{kb['recall@100']:.4f}", f"{ka['recall@100']:.4f}",
                     f"{ka['recall@100'] - kb['recall@100']:+.4f}"),
                    ("kNN nDCG@10", f"{kb['ndcg@10']:.4f}", f"{ka['ndcg@10']:.4f}", f"{ka['ndcg@10'] - kb['ndcg@10']:+.4f}")]
        fb = next((s for s in self.before["stages"] if s["kind"] == "fusion"), None)
        fa = next((s for s in self.after["stages"] if s["kind"] == "fusion"), None)
        if fb and fa:
            out.append(("fused recall@100", f"{fb['recall@100']:.4f}", f"{fa['recall@100']:.4f}",
                        f"{fa['recall@100'] - fb['recall@100']:+.4f}"))
        out += [(f"cascade nDCG@10 ({lb['name']})", f"{lb['ndcg@10']:.4f}", f"{la['ndcg@10']:.4f}",
                 f"{la['ndcg@10'] - lb['ndcg@10']:+.4f}"),
                ("cross-encoder pairs / query", f"{lb['ce_pairs_per_query']:.0f}", f"{la['ce_pairs_per_query']:.0f}", ""),
                ("cascade p50 ms", f"{lb['p50_ms']:.0f}", f"{la['p50_ms']:.0f}", "")]
        return out

    def table(self) -> Table:
        t = Table(title=f"{self.dataset} {self.split}: {self.before_index} -> {self.after_index} (distilled)")
        for c, j in (("", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
            t.add_column(c, justify=j, no_wrap=True)
        for r in self.rows():
            t.add_row(*r)
        return t

    def section(self) -> tuple[str, str]:
        return f"distill-{self.dataset}", f"Distilling the cascade into its first stage ({self.dataset})"

    def markdown(self, command: str, machine: str) -> str:
        tr, mined = self.extra.get("training", {}), self.extra.get("mined", {})
        data = tr.get("data", {})
        lines = [*head_lines(command, machine),
                 f"all-MiniLM-L6-v2 fine-tuned with margin-MSE on {tr.get('pairs', 0):,} (query, better, worse) "
                 f"pairs from {mined.get('queries', 0)} {self.dataset} {data.get('split', 'train')} queries (teacher: "
                 f"profile `{data.get('teacher')}`, scores of its `{mined.get('teacher_stage')}` stage over the "
                 f"{mined.get('window', 0):.0f} first-stage candidates it scores per query; "
                 f"{data.get('dropped_eval_queries', 0)} training queries whose text is an evaluation query left "
                 f"out; texts cut at {tr.get('max_length')} tokens); {tr.get('steps', 0)} steps of "
                 f"{tr.get('batch')} queries, lr {tr.get('learning_rate')}, {tr.get('seconds', 0) / 60:.1f} min of training on {tr.get('torch_threads')} threads, loss "
                 f"{tr.get('loss_first', 0):.4f} -> {tr.get('loss_last', 0):.4f}. The corpus embedded again into "
                 f"`{self.after_index}`; the same profile, stages and depths evaluated on {self.dataset} "
                 f"{self.split} ({self.after['queries']} queries) before and after (equal cost: the same candidates "
                 f"per stage). {self.seconds / 60:.0f} min in all.", "",
                 "| | before | after | change |", "|---|---:|---:|---:|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows()]
        ltr = "retrained on the new index's features (`--retrain-ltr`)" if data.get("retrained_ltr") else \
            "the one trained on the old index's features"
        lines += ["", f"After: the new index version with its LTR model {ltr}; the cross-encoder and every depth "
                      f"unchanged."]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- personalization


def cluster_corpus(vectors: np.ndarray, k: int, seed: int = 13) -> np.ndarray:
    """k-means clusters of the document embeddings (the keyword field of a collection that has none)."""
    from scipy.cluster.vq import kmeans2

    _, labels = kmeans2(np.asarray(vectors, dtype=np.float64), k, seed=seed, minit="++", iter=50)
    return labels


def segment_grades(qrels: Mapping[str, Mapping[str, int]], topic: Mapping[str, str], segment: str,
                   candidates: Mapping[str, Sequence[str]]) -> dict[str, dict[str, int]]:
    """What a user of ``segment`` (who likes documents of topic ``segment``) finds relevant, 0..4: a relevant
    document of the topic 4, of another topic 3, an unjudged document of the topic 1, others 0."""
    out: dict[str, dict[str, int]] = {}
    for q, docs in candidates.items():
        rel = {d for d, g in qrels.get(q, {}).items() if g > 0}
        g = {d: (4 if topic.get(d) == segment else 3) if d in rel else (1 if topic.get(d) == segment else 0)
             for d in set(docs) | rel}
        out[q] = {d: v for d, v in g.items() if v > 0}
    return out


@dataclass
class Population:
    """Simulated users: each belongs to a segment (likes one topic); anonymous searches have a hidden one."""

    users: dict[str, str]  # user id -> segment
    segments: list[str]
    anonymous: float  # share of searches without a user or segment

    @classmethod
    def make(cls, segments: list[str], per_segment: int, anonymous: float) -> "Population":
        return cls({f"{s}-u{i}": s for s in segments for i in range(per_segment)}, segments, anonymous)


def play_population(url: str, index: str, profile: str, texts: list[tuple[str, str]], pop: Population,
                    grades: Mapping[str, Mapping[str, Mapping[str, int]]], user_model: Any, impressions: int, *,
                    attribute: str = "segment", workers: int = 2, seed: int = 0,
                    on_progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Searches of the population through the service, clicks from each user's segment's grades (anonymous
    users: a hidden random segment). Returns traffic stats and each search's segment by query id."""
    from cascade.experiments.traffic import HttpTraffic

    users = sorted(pop.users)
    hidden: dict[str, str] = {}
    done = [0]
    per = [impressions // workers + (1 if w < impressions % workers else 0) for w in range(workers)]

    def worker(w: int) -> HttpTraffic:
        rng = np.random.default_rng(seed + w)
        traffic = HttpTraffic(url, index, [profile], impressions=False)
        for i in range(per[w]):
            qid, text = texts[int(rng.integers(len(texts)))]
            anon = rng.random() < pop.anonymous
            user = None if anon else users[int(rng.integers(len(users)))]
            seg = pop.segments[int(rng.integers(len(pop.segments)))] if anon else pop.users[user]  # type: ignore[index]
            body: dict[str, Any] = {"query": text, "size": 10, "profile": profile}
            if user:
                body.update(user_id=user, user_attributes={attribute: seg})
            t = time.perf_counter()
            r = traffic._post(f"{url}/v1/indexes/{index}/search", body).json()
            traffic.search_ms.append((time.perf_counter() - t) * 1e3)
            ids = [h["id"] for h in r["hits"]]
            hidden[r["query_id"]] = seg
            g = grades[seg].get(qid, {})
            clicked = user_model.simulate(np.array([g.get(d, 0) for d in ids]), rng)
            traffic._last = (r["query_id"], ids)
            traffic.post_events(i, user or "anonymous", qid, text, ids, None, None, clicked)
            done[0] += 1
            if on_progress and done[0] % 50 == 0:
                on_progress(done[0], impressions)
        traffic.client.close()
        return traffic

    return _concurrently(worker, workers, impressions), hidden


def ndcg(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> float:
    """nDCG@10 of ranked lists (judged queries without a list count 0)."""
    import ir_measures
    from ir_measures import nDCG

    r = {q: {d: float(len(ids) - i) for i, d in enumerate(ids)} or {"__none__": 0.0} for q, ids in run.items()}
    for q in qrels:
        r.setdefault(q, {"__none__": 0.0})
    m = nDCG @ 10
    return float(ir_measures.calc_aggregate([m], {q: dict(v) for q, v in qrels.items()}, r)[m])


@dataclass
class PersonalResult(BenchResult):
    dataset: str
    clusters: dict[str, int]
    population: dict[str, Any]
    traffic: dict[str, Any]
    training: dict[str, Any]
    segments: list[dict[str, Any]]  # segment, static, popular, personal (history), personal (segment only)
    no_history: dict[str, float]  # model -> nDCG@10 (plain qrels) for anonymous searches
    latency: dict[str, float]
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("dataset", "clusters", "population", "traffic", "training", "segments",
                                              "no_history", "latency")} | {"seconds": round(self.seconds, 1)}

    def table(self) -> Table:
        t = Table(title=f"{self.dataset} test: nDCG@10 per segment (its users' judgments)")
        for c in ("segment", "static", "+popularity", "+personal", "gain", "segment only"):
            t.add_column(c, justify="right", no_wrap=True)
        for s in self.segments:
            t.add_row(s["segment"], f"{s['static']:.4f}", f"{s['popular']:.4f}", f"{s['personal']:.4f}",
                      f"{s['personal'] / s['static'] - 1:+.1%}", f"{s['segment_only']:.4f}")
        return t

    def tables(self) -> list[Table]:
        t = Table(title="no history (anonymous), plain qrels; behaviour features' added time")
        for c in ("", "nDCG@10", "vs static"):
            t.add_column(c, justify="right", no_wrap=True)
        base = self.no_history["static"]
        for k, v in self.no_history.items():
            t.add_row(k, f"{v:.4f}", f"{v / base - 1:+.2%}")
        lat = self.latency
        t.add_row("added ms p50 / p99", f"{lat['added_p50_ms']:.2f}", f"{lat['added_p99_ms']:.2f}")
        return [self.table(), t]

    def section(self) -> tuple[str, str]:
        return f"personal-{self.dataset}", f"Popularity and personalized LTR features ({self.dataset})"

    def markdown(self, command: str, machine: str) -> str:
        p, tr, tg = self.population, self.traffic, self.training
        lines = [*head_lines(command, machine),
                 f"{self.dataset}'s corpus has no keyword field, so its MiniLM embeddings are clustered (k-means, "
                 f"k={len(self.clusters)}; documents per topic {dict(self.clusters)}) into a `topic` keyword field of "
                 f"a copy of the index. {len(p['segments'])} segments of {p['per_segment']} users each like one "
                 f"topic: a relevant document of their topic is grade 4, of another topic 3, any other document of "
                 f"their topic 1 (the rest 0); {p['anonymous']:.0%} of searches are anonymous (a hidden random "
                 f"segment, no user id, no segment attribute). Position-based users ({p['user']}) make "
                 f"{tr['impressions']:,} searches of the train queries through `cascade serve` ({tr['searches_per_s']} "
                 f"searches/s, the `fusion` order shown) with `user_id` and `user_attributes.segment`; clicks go back "
                 f"as UBI events; `cascade behavior consume` aggregates them in Redis.", "",
                 f"Training: {tg['searches']:,} logged searches (every {tg['every']} of the stream), their 200 fused "
                 f"candidates each, behaviour features replayed as they were at each search (point in time), labels "
                 f"the searching user's grades; three LightGBM models on the same rows: static features only, "
                 f"+ popularity (`pop.*`), + personal (`pers.*`). Evaluated through the service on the "
                 f"{p['test_queries']} test queries (never in the traffic): per segment, one of its users with "
                 f"history (nDCG@10 against that segment's grades), a new user with only the segment attribute, "
                 f"and anonymous searches against the plain test qrels. {self.seconds / 60:.0f} min in all.", "",
                 "| segment | static | + popularity | + personal | gain over static | segment attribute only |",
                 "|---|---:|---:|---:|---:|---:|"]
        for s in self.segments:
            lines.append(f"| {s['segment']} | {s['static']:.4f} | {s['popular']:.4f} | {s['personal']:.4f} | "
                         f"**{s['personal'] / s['static'] - 1:+.1%}** | {s['segment_only']:.4f} |")
        base = self.no_history["static"]
        lines += ["", "| no history (anonymous searches, plain test qrels) | nDCG@10 | vs static |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.4f} | {v / base - 1:+.2%} |" for k, v in self.no_history.items()]
        lat = self.latency
        lines += ["", f"Time the behaviour features add ({lat['searches']} test searches of 200 candidates, in process, "
                      f"real Redis on loopback, stored fields already fetched so the Redis read is not hidden behind "
                      f"that fetch as it is when serving; load average {lat['load_average']} on the 2 cores while "
                      f"measuring):", "",
                      "| ms | p50 | p99 |", "|---|---:|---:|",
                      f"| features step, static profile | {lat['static_p50_ms']:.2f} | {lat['static_p99_ms']:.2f} |",
                      f"| features step, personal profile | {lat['personal_p50_ms']:.2f} | "
                      f"{lat['personal_p99_ms']:.2f} |",
                      f"| added (per search: personal - static) | {lat['added_p50_ms']:.2f} | "
                      f"**{lat['added_p99_ms']:.2f}** |",
                      f"| of which the Redis read (one round trip) | {lat['read_p50_ms']:.2f} | {lat['read_p99_ms']:.2f} |",
                      f"| of which computing the 13 features | {lat['compute_p50_ms']:.2f} | "
                      f"{lat['compute_p99_ms']:.2f} |"]
        return "\n".join(lines) + "\n"
