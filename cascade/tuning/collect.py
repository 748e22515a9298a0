"""One pass of real searches that gives the sweep everything it re-orders: hits, fused sets, stage scores, costs.

Per query: every retriever once (:meth:`Cascade.retrieve`); every fusion
variant's candidates and features through the profile's own cascade
(:meth:`Cascade.with_fusion`, :meth:`Cascade.candidates`); each row stage
(LTR) over every variant; each pair stage (cross-encoder) over every
document any setting of the grid can put in its window, each pair scored
once. Every call is timed, and per-unit costs (ms per candidate, row, pair,
plus a fixed part per call) are fitted on those times by non-negative least
squares: the sweep prices settings with them, since re-ordering costs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cascade.bench.common import fill_fields
from cascade.candidates import Candidates
from cascade.controller import Cascade
from cascade.errors import CascadeError, QueryError
from cascade.query import Query
from cascade.tuning import chain
from cascade.tuning.crossfit import FoldModels, fit_folds
from cascade.tuning.data import Collected, QueryData, UnitCost, fit_cost
from cascade.tuning.provenance import saw
from cascade.tuning.space import (FusionVariant, Setting, Space, StageSetting, StageSpec, current_combine, stage_options,
                                  valid)
from cascade.tuning.stats import Judgments, folds_by_query

__all__ = ["Collected", "QueryData", "UnitCost", "collect", "fit_cost", "recall_curves", "specs_of"]


def specs_of(casc: Cascade) -> list[StageSpec]:
    """The sweepable description of each stage of a cascade (refusing stages whose scores depend on the window)."""
    out = []
    for st in casc.stages:
        if getattr(st, "reads_features", False):
            how = "rows"
        elif _pair_cacheable(st):
            how = "pairs"
        else:
            raise CascadeError(f"stage {st.name} ({st.kind}): its scores depend on the whole window it is given, so "
                               f"`cascade tune` cannot re-order them offline; tune a profile without it (or with it "
                               f"disabled: `enabled: false`)")
        cur = StageSetting(True, st.rerank, st.keep, current_combine(getattr(st, "combine", None)),
                           getattr(st, "early_exit", None))
        out.append(StageSpec(st.name, st.kind, st.cost_unit, how, cur))
    return out


def _pair_cacheable(stage: Any) -> bool:
    """Its score of a document depends on (query, document) alone, as its config type declares."""
    from cascade.stages import STAGE_TYPES

    cfg = STAGE_TYPES.get(getattr(stage, "kind", ""))
    # A stage that declares pair scores but built no pair scorer (a listwise LLM) ranks whole windows.
    return bool(cfg is not None and cfg.pair_cacheable and callable(getattr(stage, "score", None))
                and getattr(stage, "scorer", True) is not None)


def _slim(c: Candidates) -> Candidates:
    """The fused set without fields, features or provenance: ids, fusion score and each row's index."""
    n = len(c)
    return Candidates(ids=list(c.ids), fields=[None] * n, score=np.asarray(c.score, dtype=np.float64).copy(),
                      stage_scores={"fusion": np.asarray(c.stage_scores.get("fusion", c.score), dtype=np.float64),
                                    chain.ROW: np.arange(n, dtype=np.float64)})


def _labels(ids: Sequence[str], qrels: dict[str, int]) -> np.ndarray:
    return np.array([max(int(qrels.get(d, 0)), 0) for d in ids], dtype=np.float64)


async def collect(casc: Cascade, queries: dict[str, str], qrels: dict[str, dict[str, int]], *, dataset: str,
                  split: str, variants: Sequence[FusionVariant], space: Space, limit: int | None = None,
                  cross_fit_folds: int = 5, seed: int = 13, cross_fit: bool | None = None,
                  score_cache: "ScoreCache | None" = None, calibrate_queries: int = 20, repeats: int = 3,
                  on_progress: Callable[[str, int, int], None] | None = None) -> Collected:
    """Everything the sweep re-orders for the judged queries of one split (see the module docstring).

    ``cross_fit``: retrain row stages (LTR) per fold; None decides by provenance (the model saw this split).
    ``score_cache``: pair scores kept from earlier runs (same model stamp), so a re-run scores only new pairs.
    Unit costs come from :func:`calibrate` (best of ``repeats`` on ``calibrate_queries`` queries); the times
    of the collection itself, taken while the machine does other work, are kept beside them.
    """
    specs = specs_of(casc)
    stages = {st.name: st for st in casc.stages}
    progress = on_progress or (lambda phase, done, total: None)
    judged = [q for q in qrels if q in queries]
    if not judged:
        raise CascadeError(f"none of the {len(qrels)} judged query ids is in the queries file")
    if limit:
        judged = judged[:limit]
    depths = tuple(sorted({*space.depths,
                           *(s.current.rerank for s in specs if s.scored_by == "pairs" and s.current.rerank)}))
    space = dataclasses.replace(space, depths=depths)
    out = Collected(dataset, split, casc.config.index, casc.profile, list(casc.retrievers), list(variants), specs, [],
                    {}, [v.config for v in variants], casc.computes_features, space)
    views = [casc.with_fusion(v.config) for v in variants]

    # 1. retrieval, once per query
    retrieved: dict[str, Any] = {}
    parsed: dict[str, Query] = {}
    for n, qid in enumerate(judged, start=1):
        try:
            q = casc.validate(Query(text=queries[qid], id=qid, size=10))
        except QueryError:
            out.skipped += 1
            continue
        try:
            r = await casc.retrieve(q)
        except Exception as exc:  # every retriever failed: the query cannot be tuned on
            out.failed += 1
            if out.failed <= 3:
                out.notes.append(f"query {qid}: retrieval failed ({type(exc).__name__}: {exc}); left out")
            continue
        parsed[qid], retrieved[qid] = q, r
        qd = QueryData(qid, q.text, Judgments(qrels[qid]), {t.name: list(t.ids) for t in r.traces},
                       {t.name: [float(x) for x in t.scores] for t in r.traces},
                       retrieval_ms=r.ms, retriever_ms={t.name: t.ms for t in r.traces})
        out.queries.append(qd)
        progress("retrieving", n, len(judged))
    if not out.queries:
        raise CascadeError("no judged query could be retrieved")
    emb = getattr(getattr(casc.documents, "embedder", None), "encode_query", None)
    if emb is not None:  # the query embedding alone, on the first queries (the planner's kNN cost splits on it)
        times = []
        for qd in out.queries[:20]:
            text = " ".join(reversed(qd.text.split())) + " ?"  # same length, not the (cached) query itself
            t = time.perf_counter()
            emb(text)
            times.append((time.perf_counter() - t) * 1e3)
        out.embed_ms = float(np.median(times))
    manifest = getattr(casc.documents, "manifest", None)
    if isinstance(manifest, dict) and isinstance(manifest.get("docs"), int):
        out.corpus_docs = manifest["docs"]

    # 2. row stages: cross-fitted when their model saw this split
    row_specs = [s for s in specs if s.scored_by == "rows"]
    folds_models: dict[str, FoldModels] = {}
    want_cf = {s.name: (saw(stages[s.name], dataset, split) if cross_fit is None else cross_fit) for s in row_specs}
    for s in row_specs:
        if saw(stages[s.name], dataset, split) and not want_cf[s.name]:
            out.in_sample[s.name] = f"its model was trained on {dataset} {split}"
    if any(want_cf.values()):
        qids = [qd.qid for qd in out.queries]
        folds = folds_by_query(qids, cross_fit_folds, seed)
        rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        names: list[str] = []
        for n, qd in enumerate(out.queries, start=1):
            c, _ = await views[0].candidates(parsed[qd.qid], retrieved=retrieved[qd.qid], features=True)
            if c.features is not None:
                rows[qd.qid] = (np.asarray(c.features, dtype=np.float32), _labels(c.ids, qrels[qd.qid]))
                names = list(c.feature_names)
            progress("features for cross-fitting", n, len(out.queries))
        for s in row_specs:
            if want_cf[s.name]:
                folds_models[s.name] = fit_folds(stages[s.name].model.meta, folds, rows, names)
                out.cross_fit[s.name] = cross_fit_folds
                out.notes.append(f"{s.name}: its model was trained on {dataset} {split}, so each query here is scored "
                                 f"by a copy retrained on the other {cross_fit_folds - 1} of {cross_fit_folds} folds "
                                 f"(same parameters and trees): out-of-sample scores")

    # 3. every fusion variant (features when a stage reads them) and the row stages over it
    obs: dict[str, list[tuple[int, float]]] = {"features": [], **{s.name: [] for s in specs}}
    for n, qd in enumerate(out.queries, start=1):
        q, r = parsed[qd.qid], retrieved[qd.qid]
        for v, view in enumerate(views):
            # Row stages run over the current fusion only (space.valid): other variants need no features.
            c, traces = await view.candidates(q, retrieved=r, features=None if v == 0 else False)
            qd.fusion_ms.append(next((tr.ms for tr in traces if tr.name == "fusion"), 0.0))
            ft = next((tr for tr in traces if tr.name == "features"), None)
            if ft is not None:
                if ft.error:
                    raise CascadeError(f"query {qd.qid}: features failed ({ft.error})")
                obs["features"].append((len(c), ft.ms))
            scores: dict[str, np.ndarray] = {}
            for s in (row_specs if v == 0 else []):
                t = time.perf_counter()
                own = np.asarray(await stages[s.name].score(q, c, None), dtype=np.float64)
                obs[s.name].append((len(c), (time.perf_counter() - t) * 1e3))
                if s.name in folds_models:
                    own = folds_models[s.name].predict(qd.qid, c.features)
                scores[s.name] = own
            qd.variants.append(_slim(c))
            qd.rows.append(scores)
        progress("fusion variants and row stages", n, len(out.queries))

    # 4. pair stages, in order: every document any setting of the grid can put in their window, scored once
    for j, s in enumerate(specs):
        if s.scored_by != "pairs":
            continue
        if saw(stages[s.name], dataset, split):
            out.in_sample[s.name] = (f"its model was trained on {dataset} {split} judgments: its gain here is "
                                     f"in-sample (overstated), and it cannot be retrained per fold")
        upstream = [stage_options(u, space) for u in specs[:j]]
        prefixes = [()]
        for opts in upstream:
            prefixes = [(*p, o) for p in prefixes for o in opts]
        deepest = None if s.current.rerank is None else max(depths)  # None: the current setting scores all
        for n, qd in enumerate(out.queries, start=1):
            want: dict[str, None] = {}
            for v in range(len(variants)):
                for pre in prefixes:
                    if not valid(v, pre, specs):
                        continue
                    res = chain.run(qd, Setting(v, tuple(pre)), specs[:j], then=deepest)
                    for d in (res.out.ids if deepest is None else res.out.ids[:deepest]):
                        want.setdefault(d, None)
            table = qd.pairs.setdefault(s.name, {})
            if score_cache is not None:
                score_cache.fill(stages[s.name], qd.text, table, want)
            missing = [d for d in want if d not in table]
            if missing:
                cands = Candidates(ids=missing, fields=[None] * len(missing), score=np.zeros(len(missing)))
                await fill_fields(casc, cands, len(cands))
                t = time.perf_counter()
                got = np.asarray(await stages[s.name].score(parsed[qd.qid], cands, None), dtype=np.float64)
                obs[s.name].append((len(missing), (time.perf_counter() - t) * 1e3))
                table.update(zip(missing, got.tolist()))
                if score_cache is not None:
                    score_cache.add(stages[s.name], qd.text, dict(zip(missing, got.tolist())))
            progress(f"{s.name} pairs", n, len(out.queries))
    if score_cache is not None:
        score_cache.save()

    out.loaded_costs = {"features": fit_cost("candidates", obs["features"]),
                        **{s.name: fit_cost(s.cost_unit, obs[s.name]) for s in specs}}
    out.costs = await calibrate(casc, out, parsed, views[0], stages, calibrate_queries, repeats,
                                lambda d, t: progress("calibrating unit costs (best of repeats)", d, t))
    out.recall = recall_curves(out, qrels, {**{n: r.k for n, r in casc.config.retrievers.items()},
                                            "fusion": variants[0].config.keep})
    return out


async def _best(call: Callable[[int], Any], repeats: int) -> float:
    """Core-milliseconds of ``call(i)``: over ``repeats`` runs, the least of its wall time and its process CPU
    time. On a machine shared with other work the wall time includes waiting for a core and the CPU time does
    not; a call computing on several threads uses more CPU than wall time on an idle machine, where the wall
    time wins. So this is the work of the call on one core: exact for single-threaded stages, an upper bound
    on an idle machine's latency for a model running on several threads."""
    best = np.inf
    for i in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        res = call(i)
        if hasattr(res, "__await__"):
            await res
        best = min(best, (time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3)
    return float(best)


async def calibrate(casc: Cascade, col: Collected, parsed: dict[str, Query], view: Cascade, stages: dict[str, Any],
                    n: int, repeats: int, on_progress: Callable[[int, int], None]) -> dict[str, UnitCost]:
    """Unit costs on this machine, robust to the other work it shares the CPU with: each call repeated
    ``repeats`` times on the first ``n`` queries and its undisturbed time kept (:func:`_best`), then fitted.
    Retrieval and the query embedding are re-measured the same way; pair stages at 10, 20 and 30 pairs."""
    obs: dict[str, list[tuple[int, float]]] = {"features": [], **{s.name: [] for s in col.specs}}
    emb = getattr(getattr(casc.documents, "embedder", None), "encode_query", None)
    qds = col.queries[:n]
    total, embeds = [], []
    each: dict[str, list[float]] = {name: [] for name in casc.retrievers}
    for i, qd in enumerate(qds, start=1):
        q = parsed[qd.qid]

        def fresh(i: int) -> Query:  # another text each time: a cached query embedding would time nothing
            return dataclasses.replace(q, text=f"{q.text} {i}")

        total.append(await _best(lambda i: casc.retrieve(fresh(i)), repeats))
        for name, retriever in casc.retrievers.items():  # each alone (the planner scales BM25's)
            k = casc.config.retrievers[name].k
            each[name].append(await _best(lambda i: retriever.retrieve(fresh(i + repeats), k), repeats))
        r = await casc.retrieve(q)
        if emb is not None:
            embeds.append(await _best(lambda i: emb(fresh(i + 2 * repeats).text), repeats))
        box: dict[str, Any] = {}

        async def cands() -> None:
            box["c"], box["t"] = await view.candidates(q, retrieved=r)

        feats = await _best(lambda i: cands(), repeats)
        c = box["c"]
        if any(t.name == "features" for t in box["t"]):
            obs["features"].append((len(c), feats))
        for sp in col.specs:
            st = stages[sp.name]
            if sp.scored_by == "rows":
                obs[sp.name].append((len(c), await _best(lambda i: st.score(q, c, None), repeats)))
                continue
            docs = list(qd.pairs.get(sp.name, {}))[:30]
            for size in sorted({min(len(docs), k) for k in (10, 20, 30)} - {0}):
                part = Candidates(ids=docs[:size], fields=[None] * size, score=np.zeros(size))
                await fill_fields(casc, part, size)
                obs[sp.name].append((size, await _best(lambda i: st.score(q, part, None), repeats)))
        on_progress(i, len(qds))
    if total:
        for qd in col.queries:  # every setting pays the same retrieval: its undisturbed median
            qd.retrieval_ms = float(np.median(total))
        col.retriever_samples = {k: [float(x) for x in v] for k, v in each.items() if v}
        for qd in col.queries:
            qd.retriever_ms = {k: float(np.median(v)) for k, v in each.items() if v}
    if embeds:
        col.embed_ms = float(np.median(embeds))
    col.calibration = {"queries": len(qds), "repeats": repeats}
    return {"features": fit_cost("candidates", obs["features"]),
            **{s.name: fit_cost(s.cost_unit, obs[s.name]) for s in col.specs}}


class ScoreCache:
    """Pair scores of earlier runs, by the scoring stage's model stamp (a changed model starts afresh)."""

    def __init__(self, path: Path):
        self.path, self.data, self.dirty = path, {}, False
        if path.is_file():
            try:
                self.data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                self.data = {}

    @staticmethod
    def _key(stage: Any) -> str:
        return f"{stage.name}|{stage.model_stamp() or stage.kind}"

    def fill(self, stage: Any, query: str, table: dict[str, float], want: Any) -> None:
        got = self.data.get(self._key(stage), {}).get(query)
        if got:
            table.update({d: got[d] for d in want if d in got and d not in table})

    def add(self, stage: Any, query: str, scores: dict[str, float]) -> None:
        self.data.setdefault(self._key(stage), {}).setdefault(query, {}).update(scores)
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data), encoding="utf-8")
            tmp.replace(self.path)
            self.dirty = False


def recall_curves(col: Collected, qrels: dict[str, dict[str, int]], depth: dict[str, int],
                  ks: Sequence[int] = (5, 10, 20, 30, 50, 100, 200, 500, 1000)) -> dict[str, dict[int, float]]:
    """Mean recall@k of each retriever and of the current fusion over the judged queries, for k up to the depth
    each one was asked for (``depth``: a retriever's k, fusion's keep)."""
    out: dict[str, dict[int, float]] = {}
    lists = {r: [qd.hits.get(r, []) for qd in col.queries] for r in col.retrievers}
    lists["fusion"] = [qd.variants[0].ids for qd in col.queries]
    for name, runs in lists.items():
        curve = {}
        for k in sorted({*(k for k in ks if k < depth[name]), depth[name]}):
            vals = []
            for qd, ids in zip(col.queries, runs):
                rel = {d for d, g in qrels[qd.qid].items() if g > 0}
                if rel:
                    vals.append(len(rel & set(ids[:k])) / len(rel))
            curve[k] = float(np.mean(vals)) if vals else 0.0
        out[name] = curve
    return out
