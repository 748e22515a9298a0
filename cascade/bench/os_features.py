"""Cost of the OpenSearch keyword-feature round trip (`cascade bench-os-features`, run by `make bench`).

On the OpenSearch backend the ``kw.FIELD.*`` LTR features come from the
cluster's own scoring: one ``_msearch`` per query (connectors/opensearch/
features.py), timed by the features step's ``keyword_features`` trace entry.
This benchmark loads a dataset's corpus into a fresh osmem server (an
in-memory OpenSearch-compatible HTTP server, on loopback) and, for each
candidate count N, runs the judged queries through ``Cascade.candidates(q,
features=True)`` on osmem and on the dataset's embedded index, interleaved
query by query (alternating which backend goes first), so that whatever else
loads the machine weighs on both alike.

Both cascades are BM25-only config copies of the dataset's config (osmem has
no kNN): one ``bm25`` retriever with ``k: N``, ``fusion.keep: N``, the config's
features with ``semantic: false``, no stages, so the features step does the
same work on both. The added latency is the round trip itself (the
``keyword_features`` ms on osmem); the features step's difference between
the backends is reported beside it (paired per query).

osmem's ``_score`` is not Lucene's and its process is not a cluster's: the
numbers say what the round trip costs on loopback (serialization, HTTP, the
sub-searches' work on an in-memory index), not what a production cluster
answers in.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

from cascade.bench.common import BenchResult, head_lines, pct
from cascade.config import BM25Config, IndexConfig
from cascade.errors import CascadeError
from cascade.query import Query
from cascade.settings import Settings

OSMEM, EMBEDDED = "osmem", "embedded"
COLD, WARM = "cold", "warm"


@dataclass
class Arm:
    """One backend at one candidate count: per query, what its traces said."""

    backend: str
    candidates: int  # asked of the retriever and fusion
    df: str = COLD  # cold: the pass that counts each new word's document frequency; warm: all of them cached
    sizes: list[int] = field(default_factory=list)  # fused candidates per query
    retrieval_ms: list[float] = field(default_factory=list)
    features_ms: list[float] = field(default_factory=list)  # the whole features step
    keyword_ms: list[float] = field(default_factory=list)  # the keyword_features round trip (osmem only)
    subsearches: list[int] = field(default_factory=list)  # sub-searches per _msearch (osmem only)
    counts: list[int] = field(default_factory=list)  # of which document-frequency counts
    errors: int = 0  # queries whose features or keyword_features trace carried an error

    @property
    def mean_size(self) -> float:
        return sum(self.sizes) / len(self.sizes) if self.sizes else 0.0


@dataclass
class OSFeaturesBench(BenchResult):
    dataset: str
    split: str
    queries: int
    docs: int  # documents loaded into osmem
    load_s: float
    osmem_version: str
    features: int  # size of the feature set (the same on both backends)
    keyword_fields: list[str]
    stats_ttl_s: float
    arms: list[Arm] = field(default_factory=list)
    loadavg_start: tuple[float, float, float] | None = None
    loadavg_end: tuple[float, float, float] | None = None
    cores: int | None = field(default_factory=os.cpu_count)

    def arm(self, backend: str, candidates: int, df: str = COLD) -> Arm:
        return next(a for a in self.arms if a.backend == backend and a.candidates == candidates and a.df == df)

    @property
    def levels(self) -> list[tuple[int, str]]:
        """(N, pass) in the order measured."""
        return list(dict.fromkeys((a.candidates, a.df) for a in self.arms))

    def step_diff(self, candidates: int, df: str = COLD) -> list[float]:
        """Per query: the features step on osmem minus on the embedded backend (the same query, back to back)."""
        o, e = self.arm(OSMEM, candidates, df), self.arm(EMBEDDED, candidates, df)
        return [a - b for a, b in zip(o.features_ms, e.features_ms)]

    def beyond_round_trip(self, candidates: int, df: str = COLD) -> list[float]:
        """Per query on osmem: the features step minus its round trip (stored fields, the feature matrix)."""
        o = self.arm(OSMEM, candidates, df)
        return [a - b for a, b in zip(o.features_ms, o.keyword_ms)]

    def tables(self) -> list[Table]:
        """Per backend and N, then the added latency per N (two tables: each fits 80 columns)."""
        return _tables(self)

    def table(self) -> Table:
        """The headline: the added latency per N (``tables()`` has the per-backend one before it)."""
        return _tables(self)[-1]

    def section(self) -> tuple[str, str]:
        return f"os-features-{self.dataset}", "OpenSearch keyword features: the feature round trip against osmem"

    def markdown(self, command: str, machine: str) -> str:
        return markdown(self, command, machine)


def bench_configs(cfg: IndexConfig, url: str, candidates: int) -> tuple[IndexConfig, IndexConfig]:
    """(osmem, embedded) copies of ``cfg``: one BM25 retriever with k = N, fusion keep N, features without the
    semantic ones, no stages or other profiles; the embedded copy keeps the config's own backend (its index)."""
    from cascade.backend_config import OpenSearchBackendConfig
    from features.config import FeatureSetConfig

    bm25 = next((r for r in cfg.retrievers.values() if isinstance(r, BM25Config)), None)
    bm25 = (bm25 or BM25Config()).model_copy(update={"k": candidates})
    feats = (cfg.features or FeatureSetConfig()).model_copy(update={"semantic": False})
    common = {"retrievers": {"bm25": bm25}, "fusion": cfg.fusion.model_copy(update={"keep": candidates}),
              "features": feats, "stages": [], "profiles": {}, "default_profile": "default",
              "cache": cfg.cache.model_copy(update={"enabled": False, "pair_scores": False})}
    backend = OpenSearchBackendConfig(hosts=[url], timeout_s=60, retry_backoff_s=0.05)
    return cfg.model_copy(update={**common, "backend": backend}), cfg.model_copy(update=common)


def require_osmem() -> Any:
    """The osmem server class, or a CascadeError saying what to install (no brackets: the CLI prints markup)."""
    try:
        from osmem_server import OsmemServer
    except ImportError:
        raise CascadeError("bench-os-features needs osmem-server (a dev dependency of cascade-rank), which is not "
                           "installed: pip install 'osmem-server>=0.1.6', or make venv") from None
    try:
        import opensearchpy  # noqa: F401
    except ImportError:
        raise CascadeError("bench-os-features needs opensearch-py (the opensearch extra of cascade-rank), which is "
                           "not installed: make venv installs every extra") from None
    return OsmemServer


def _recording(queries: Any) -> Callable[[Arm], None]:
    """Count the sub-searches of each feature ``_msearch`` (scores, matches, document-frequency counts) into the
    arm last given to the function returned."""
    plan = queries.plan
    into: list[Arm] = []

    def recorded(text: str, ids: list[str], now: float):
        tagged, words = plan(text, ids, now)
        if into:
            into[-1].subsearches.append(len(tagged))
            into[-1].counts.append(sum(1 for t, _ in tagged if t[0] == "count"))
        return tagged, words

    queries.plan = recorded
    return into.append


def _trace_ms(traces: list[Any], name: str) -> tuple[float | None, bool]:
    t = next((t for t in traces if t.name == name), None)
    return (None, False) if t is None else (t.ms, bool(t.error))


async def _one(casc: Any, text: str, arm: Arm) -> None:
    q = casc.validate(Query(text=text))
    cands, traces = await casc.candidates(q, features=True)
    arm.sizes.append(len(cands))
    arm.retrieval_ms.append(max((tr.elapsed_ms for tr in traces if tr.kind == "retriever"), default=0.0))
    f_ms, f_err = _trace_ms(traces, "features")
    if f_ms is None:
        raise CascadeError(f"the {arm.backend} cascade computed no features (no `features` trace)")
    arm.features_ms.append(f_ms)
    kw_ms, kw_err = _trace_ms(traces, "keyword_features")
    if arm.backend == OSMEM:
        if kw_ms is None and len(cands):
            raise CascadeError("the osmem cascade's features step has no keyword_features entry")
        arm.keyword_ms.append(kw_ms or 0.0)
    arm.errors += f_err or kw_err


async def _measure(res: OSFeaturesBench, configs: dict[int, tuple[IndexConfig, IndexConfig]], settings: Settings,
                   texts: list[str], passes: tuple[str, ...], on_progress: Callable[[int, int], None] | None) -> None:
    from cascade.builder import open_index

    total, done = len(texts) * len(configs) * len(passes), 0
    for n, (os_cfg, emb_cfg) in configs.items():
        opened: dict[str, Any] = {}
        try:
            for b, c in ((OSMEM, os_cfg), (EMBEDDED, emb_cfg)):
                opened[b] = await asyncio.to_thread(open_index, c, settings, stages=False)
            cascades = {b: o.cascade() for b, o in opened.items()}
            names = {b: c.features.names for b, c in cascades.items()}
            if names[OSMEM] != names[EMBEDDED]:
                raise CascadeError(f"the two backends' feature sets differ: {names[OSMEM]} vs {names[EMBEDDED]}")
            if cascades[OSMEM].features.keyword_source != "opensearch":
                raise CascadeError("the osmem cascade's keyword features do not come from the cluster")
            res.features = len(names[OSMEM])
            for b, c in cascades.items():  # warm-up: connection, collection size, lazy loads; not recorded
                await _one(c, "cascade warm-up query", Arm(b, n))
            record = _recording(cascades[OSMEM].features.source.queries)
            for df in passes:  # cold: each query's new words are counted in its round trip; warm: all cached
                arms = {b: Arm(b, n, df) for b in (OSMEM, EMBEDDED)}
                record(arms[OSMEM])
                for i, text in enumerate(texts):
                    for b in ((OSMEM, EMBEDDED) if i % 2 == 0 else (EMBEDDED, OSMEM)):
                        await _one(cascades[b], text, arms[b])
                    done += 1
                    if on_progress:
                        on_progress(done, total)
                res.arms += [arms[OSMEM], arms[EMBEDDED]]
        finally:
            for o in opened.values():
                await o.close()


def run(cfg: IndexConfig, settings: Settings, corpus: Path, texts: list[str], *, candidates: list[int],
        warm: bool = True, dataset: str = "", split: str = "", on_progress: Callable[[int, int], None] | None = None,
        on_step: Callable[[str], None] = lambda s: None) -> OSFeaturesBench:
    """Load ``corpus`` into a fresh osmem server, then time each query's candidates + features on osmem and on
    the embedded index of ``cfg`` (which must be built), for each N in ``candidates``: a cold pass (the
    document-frequency counts of each query's new words ride in its round trip) and, with ``warm``, the same
    queries again with every count cached (the steady state)."""
    from cascade.datasets import LoadStats, iter_corpus
    from connectors.embedded import index_exists
    from connectors.opensearch.admin import load_corpus

    server_cls = require_osmem()
    if not index_exists(cfg, settings):
        raise CascadeError(f"index {cfg.index} is not built; run `cascade index --dataset {dataset or cfg.index}` "
                           f"(or `cascade demo --prepare-only`) first")
    levels = list(dict.fromkeys(candidates))
    if not levels or min(levels) < 1:
        raise ValueError(f"candidates {candidates!r}: positive integers")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no queries to time")
    server = server_cls.start(freeze=False, japanese=False)
    try:
        configs = {n: bench_configs(cfg, server.url, n) for n in levels}
        os_cfg = configs[levels[0]][0]
        on_step(f"loading {corpus} into osmem {server.version} at {server.url}")
        stats = LoadStats()
        rep = asyncio.run(load_corpus(os_cfg, iter_corpus(corpus, stats=stats), settings, source=str(corpus),
                                      stats=stats))
        if rep.failed:
            raise CascadeError(f"osmem refused {len(rep.failed)} documents, e.g. {rep.failed[0]}")
        ft = os_cfg.features
        text_fields = [n for n, f in os_cfg.fields.items() if f.type == "text"]
        kw_fields = list((ft.keyword.fields or text_fields) if ft is not None and ft.keyword else [])
        res = OSFeaturesBench(dataset or cfg.index, split, len(texts), rep.count, rep.seconds, server.version, 0,
                              kw_fields, os_cfg.backend.stats_ttl_s)
        res.loadavg_start = os.getloadavg()
        passes = (COLD, WARM) if warm else (COLD,)
        on_step(f"{len(texts)} queries x {len(levels)} candidate counts x {len(passes)} passes, osmem and "
                f"embedded interleaved")
        asyncio.run(_measure(res, configs, settings, texts, passes, on_progress))
        res.loadavg_end = os.getloadavg()
    finally:
        server.close()
    return res


def _cell(v: list[float]) -> str:
    return f"{pct(v, 50):.1f} / {pct(v, 95):.1f}" if v else "-"


def _tables(r: OSFeaturesBench) -> list[Table]:
    t = Table(title=f"candidates + features, {r.queries} {r.dataset} {r.split} queries (ms, p50 / p95)")
    for c in ("N", "df", "backend", "cands", "retrieval", "features step", "round trip"):
        t.add_column(c, justify="left" if c in ("df", "backend") else "right")
    for a in r.arms:
        t.add_row(str(a.candidates), a.df, a.backend, f"{a.mean_size:.0f}", _cell(a.retrieval_ms),
                  _cell(a.features_ms), _cell(a.keyword_ms) if a.backend == OSMEM else "-")
    u = Table(title="added latency on osmem: its feature round trip (ms)")
    for c in ("N", "df", "p50", "p95", "step diff p50", "p95", "sub-searches", "errors"):
        u.add_column(c, justify="left" if c == "df" else "right")
    for n, df in r.levels:
        o, d = r.arm(OSMEM, n, df), r.step_diff(n, df)
        u.add_row(str(n), df, f"{pct(o.keyword_ms, 50):.1f}", f"{pct(o.keyword_ms, 95):.1f}", f"{pct(d, 50):+.1f}",
                  f"{pct(d, 95):+.1f}", f"{pct(o.subsearches, 50):.0f}",
                  str(o.errors + r.arm(EMBEDDED, n, df).errors))
    return [t, u]


def markdown(r: OSFeaturesBench, command: str, machine: str) -> str:
    p = pct
    la = lambda x: ", ".join(f"{v:.1f}" for v in x) if x else "?"  # noqa: E731
    fields = ", ".join(r.keyword_fields) or "none"
    warm = any(a.df == WARM for a in r.arms)
    lines = [
        *head_lines(command, machine),
        f"Load average (1, 5, 15 min) at start: {la(r.loadavg_start)}; at the end: {la(r.loadavg_end)} (the "
        f"machine's {r.cores} cores are shared by the benchmark, osmem and anything else running)  ",
        f"Cluster: osmem-server {r.osmem_version} (in-memory, OpenSearch API) on 127.0.0.1, started for the run; "
        f"{r.docs} {r.dataset} documents loaded in {r.load_s:.1f} s  ",
        f"Cascade on both backends: `bm25` (k = N) → fusion (keep N) → features ({r.features}, `semantic: false`; "
        f"keyword features of {fields}); no stages, cache off  ", "",
        f"{r.queries} judged {r.dataset} {r.split} queries through `Cascade.candidates(q, features=True)` on osmem "
        "and on the embedded index, interleaved query by query (alternating which goes first), after one warm-up "
        "query each. Times come from the search's own traces: retrieval (the retriever's step), the features "
        "step (stored fields, the backend's feature round trip, the feature matrix) and, on osmem, its "
        "`keyword_features` entry: the one `_msearch` of feature queries, from the request to the parsed "
        "answer. Each N opens fresh cascades. df `cold`: the first pass, where a query's round trip also "
        "counts the document frequency of each word no earlier query asked for (one `size: 0` sub-search per "
        f"word and field, then cached for `backend.stats_ttl_s` = {r.stats_ttl_s:g} s)"
        + ("; `warm`: the same queries again, every count cached, so the round trip carries only the "
           "candidates' scoring and matching sub-searches (two per field)." if warm else "."),
        "osmem's BM25 is not Lucene's, so the two backends' candidate sets differ a little (cands: fused "
        "candidates per query on average).", "",
        "| N | df | backend | cands | retrieval p50 / p95 ms | features step p50 / p95 ms | "
        "round trip p50 / p95 ms | errors |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for a in r.arms:
        lines.append(f"| {a.candidates} | {a.df} | {a.backend} | {a.mean_size:.1f} | {_cell(a.retrieval_ms)} | "
                     f"{_cell(a.features_ms)} | {_cell(a.keyword_ms) if a.backend == OSMEM else '-'} | {a.errors} |")
    lines += ["", "**Added latency of the feature round trip against osmem on loopback** (its `keyword_features` "
                  "ms), the features step on osmem minus on the embedded index (per query, the two run back to "
                  "back), and what osmem's features step spends besides the round trip:", "",
              "| candidates | df | round trip p50 ms | round trip p95 ms | step osmem − embedded p50 / p95 ms | "
              "step − round trip p50 ms | sub-searches per `_msearch` (p50) | df counts (mean) |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for n, df in r.levels:
        o, d, rest = r.arm(OSMEM, n, df), r.step_diff(n, df), r.beyond_round_trip(n, df)
        counts = sum(o.counts) / len(o.counts) if o.counts else 0.0
        lines.append(f"| {n} | {df} | **{p(o.keyword_ms, 50):.1f}** | **{p(o.keyword_ms, 95):.1f}** | "
                     f"{p(d, 50):+.1f} / {p(d, 95):+.1f} | {p(rest, 50):.1f} | {p(o.subsearches, 50):.0f} | "
                     f"{counts:.1f} |")
    lines += ["",
              "On the embedded backend the keyword features are read from the forward index in process (no "
              "round trip). On osmem the features step also computes `kw.FIELD.log_length` by analyzing each "
              "candidate's stored text (the cluster does not expose its norms): much of the step's time beyond "
              "the round trip. osmem is a single in-memory process on the same machine: a real cluster adds "
              "its own search time and the network.", ""]
    return "\n".join(lines)
