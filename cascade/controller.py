"""The controller: retrievers in parallel, fusion, then each stage of one rank profile in order, with a trace per step.

It owns no ranking logic of its own; it sequences the pieces a profile names and
records what each did (candidates in and out, milliseconds, scores, cost) so that
``explain``, metrics and evaluation read the same trace. A :class:`Cascade` is a
value: :meth:`Cascade.prefix` and :meth:`Cascade.with_overrides` give views that
share the backend and the loaded models, so evaluation and benchmarks run
exactly what the service runs. Cascades are built by :mod:`cascade.builder`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from cascade.candidates import Candidates, Hit
from cascade.config import IndexConfig, RRFConfig
from cascade.errors import AllRetrieversFailed, CascadeError
from cascade.fusion import fuse
from cascade.overrides import apply_overrides, override_bounds
from cascade.query import Query, validate_query
from cascade.retrieval import DocumentSource, MultiRetriever, Retriever
from cascade.stages.base import Stage, below, early_exit
from cascade.stages.usage import metered
from cascade.text import error_text, normalize_query

log = logging.getLogger(__name__)


@dataclass
class StageTrace:
    """What one step did. ``kind`` is ``retriever``, ``fusion`` or the stage's type."""

    name: str
    kind: str
    n_in: int
    n_out: int
    scored: int  # candidates the step assigned a score to (cross-encoder pairs, for that kind)
    ms: float  # this step alone
    elapsed_ms: float  # from the start of the search to the end of this step
    ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None
    note: str | None = None  # e.g. a stage shrunk or skipped to fit the request's budget
    budget_cut: str | None = None  # "shrunk" or "skipped" when the budget cut this stage (the note says how)
    cost_unit: str | None = None  # stages: what ``scored`` counts (pairs, rows, calls, tokens)
    usage: dict[str, int] = field(default_factory=dict)  # other work the stage metered (an LLM's tokens)
    early_exit: dict[str, Any] | None = None  # the stage was skipped: the previous step was confident (signal, value)

    def as_dict(self, top: int | None = None) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("name", "kind", "n_in", "n_out", "scored", "ms", "elapsed_ms")}
        if self.cost_unit:
            d["cost_unit"] = self.cost_unit
        if self.usage:
            d["usage"] = dict(self.usage)
        d["ms"], d["elapsed_ms"] = round(self.ms, 3), round(self.elapsed_ms, 3)
        d["top"] = [{"id": i, "score": _f(s)} for i, s in list(zip(self.ids, self.scores))[:top]]
        if self.error:
            d["error"] = self.error
        if self.note:
            d["note"] = self.note
        if self.early_exit:
            d["early_exit"] = dict(self.early_exit)
        return d


    def costs(self) -> dict[str, int]:
        """This step's work by unit: ``scored`` in its cost unit plus what it metered (nothing when it failed)."""
        if self.error or not self.cost_unit:
            return {}
        out = {self.cost_unit: self.scored}
        for unit, n in self.usage.items():
            out[unit] = out.get(unit, 0) + n
        return out


def _f(x: float) -> float | None:
    return None if x is None or np.isnan(x) else round(float(x), 6)


class CostModel:
    """A running estimate of each stage's cost in milliseconds per scored candidate (EWMA)."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self._per_item: dict[str, float] = {}

    def observe(self, stage: str, ms: float, items: int) -> None:
        x = ms / max(items, 1)
        old = self._per_item.get(stage)
        self._per_item[stage] = x if old is None else (1 - self.alpha) * old + self.alpha * x

    def per_item(self, stage: str) -> float:
        return self._per_item.get(stage, 0.0)

    def estimate(self, stage: str, items: int) -> float | None:
        """None until the stage has run once: the first request pays to learn the cost."""
        p = self._per_item.get(stage)
        return None if p is None else p * items


@dataclass
class SearchResult:
    query: Query
    candidates: Candidates
    traces: list[StageTrace]
    took_ms: float
    profile: str = "default"

    def cost(self) -> dict[str, int]:
        """Work done by the stages that ran, by cost unit (e.g. ``{"pairs": 10, "rows": 200, "tokens": 900}``)."""
        out: dict[str, int] = {}
        for t in self.traces:
            for unit, n in t.costs().items():
                out[unit] = out.get(unit, 0) + n
        return out

    @property
    def degraded(self) -> list[str]:
        """Names of steps that failed; the response was built without them."""
        return [t.name for t in self.traces if t.error]

    @property
    def budget_skipped(self) -> list[str]:
        """Stages the latency budget skipped (the previous order was kept)."""
        return [t.name for t in self.traces if t.budget_cut == "skipped"]

    @property
    def early_exits(self) -> list[str]:
        """Stages skipped for this query because the step before them was already confident."""
        return [t.name for t in self.traces if t.early_exit]

    @property
    def budget_shrunk(self) -> dict[str, int]:
        """Stages the latency budget shrunk: name -> candidates the stage scored (fewer than it would have)."""
        return {t.name: t.scored for t in self.traces if t.budget_cut == "shrunk"}

    def hits(self, explain: bool = False) -> list[dict[str, Any]]:
        c, start = self.candidates, self.query.offset
        out = []
        for i in range(start, min(start + self.query.size, len(c))):
            hit: dict[str, Any] = {"id": c.ids[i], "score": _f(c.score[i]), "fields": c.fields[i] or {}}
            if explain:
                hit["retrievers"] = c.provenance(i)
                hit["stages"] = {k: _f(v[i]) for k, v in c.stage_scores.items()}
                if c.features is not None:
                    hit["features"] = {n: _f(v) for n, v in zip(c.feature_names, c.features[i])}
            out.append(hit)
        return out


class Cascade:
    """One rank profile of an index: ``await cascade.search(Query("..."))``.

    Build it with :func:`cascade.builder.open_index` (every profile of an index
    shares one backend and its models). ``config`` is the index config with this
    profile's fusion, features and stages at the top level.
    """

    def __init__(
        self,
        config: IndexConfig,
        retrievers: dict[str, Retriever],
        stages: list[Stage],
        documents: DocumentSource | None = None,
        features: Any = None,
        multi: MultiRetriever | None = None,
        profile: str = "default",
    ):
        self.config, self.retrievers, self.stages, self.documents = config, retrievers, stages, documents
        # One round trip for every retriever when the backend (the document source) offers it.
        self.multi = multi if multi is not None else (documents if isinstance(documents, MultiRetriever) else None)
        self.features = features  # a features.extractor.FeatureExtractor when the profile declares features
        self.profile = profile
        self._costs = CostModel()
        self._field_types = {n: f.type for n, f in config.fields.items()}

    # ------------------------------------------------------------------ views

    def _view(self, **changes: Any) -> "Cascade":
        view = copy.copy(self)
        for k, v in changes.items():
            setattr(view, k, v)
        return view

    def prefix(self, n: int) -> "Cascade":
        """This cascade cut after its first ``n`` stages (0: retrieval and fusion only); shares everything."""
        if n < 0:
            raise ValueError("prefix: n must be >= 0")
        return self._view(stages=list(self.stages[:n]))

    def with_overrides(self, overrides: Mapping[str, Any], *, deeper: bool = False) -> "Cascade":
        """A view with other keep/rerank values per step (``{"cross_encoder": {"rerank": 30}}``).

        By default only ever shallower than the profile (what a request may ask:
        :class:`cascade.errors.OverrideError` names the override and its bound);
        ``deeper=True`` lets evaluation and benchmarks sweep past it.
        """
        if not overrides:
            return self
        fusion, stages = apply_overrides(self, overrides, deeper=deeper)
        view = self._view(stages=stages)
        if fusion is not self.config.fusion:
            view.config = self.config.model_copy(update={"fusion": fusion})
        return view

    def with_fusion(self, fusion: Any) -> "Cascade":
        """A view fusing with another fusion config (an RRFConfig or LinearConfig): how tuning tries fusions."""
        return self._view(config=self.config.model_copy(update={"fusion": fusion}))

    def bounds(self) -> dict[str, dict[str, int | None]]:
        """The largest keep and rerank a request may ask of each step."""
        return override_bounds(self)

    def plan(self) -> list[dict[str, Any]]:
        """The cascade as declared: what ``explain`` mirrors."""
        steps: list[dict[str, Any]] = [
            {"name": n, "type": r.type, "k": r.k} for n, r in self.config.retrievers.items()
        ]
        f = self.config.fusion
        steps.append({"name": "fusion", "type": f.method, "keep": f.keep, **({"k": f.k} if isinstance(f, RRFConfig) else {"normalize": f.normalize})})
        if self.computes_features:
            steps.append({"name": "features", "type": "features", "features": len(self.features.names)})
        for s in self.stages:
            steps.append(s.describe())
        return steps

    @property
    def computes_features(self) -> bool:
        """Features are computed only when a stage of this cascade reads them."""
        return self.features is not None and any(getattr(s, "reads_features", False) for s in self.stages)

    def reset_costs(self) -> None:
        """Forget the learned stage costs (after a cold warm-up run, which would shrink early budgets for nothing)."""
        self._costs = CostModel()

    def validate(self, query: Query) -> Query:
        """The query checked against the index and its text normalized (every path ranks the same text)."""
        lim = self.config.limits
        if isinstance(query.text, str):
            query = dataclasses.replace(query, text=normalize_query(query.text))
        return validate_query(query, self._field_types, lim.max_size, lim.max_query_chars)

    # ------------------------------------------------------------------ running

    async def _retrieve(self, name: str, retriever: Retriever, query: Query, t0: float) -> tuple[list[Hit], StageTrace]:
        k = self.config.retrievers[name].k
        t = time.perf_counter()
        try:
            hits = await retriever.retrieve(query, k)
            error = None
        except CascadeError:
            raise
        except Exception as exc:  # a broken retriever degrades the response, the other ones still answer
            log.exception("retriever %s failed", name)
            hits, error = [], error_text(exc)
        now = time.perf_counter()
        trace = StageTrace(name, "retriever", 0, len(hits), len(hits), (now - t) * 1e3, (now - t0) * 1e3,
                           [h.id for h in hits], [h.score for h in hits], error)
        return hits, trace

    async def _retrieve_many(self, query: Query, t0: float) -> list[tuple[list[Hit], StageTrace]]:
        """Every retriever in one backend call; each still gets its own trace (sharing the round trip's time)."""
        ks = {n: self.config.retrievers[n].k for n in self.retrievers}
        t = time.perf_counter()
        try:
            answers: dict = await self.multi.retrieve_many(query, ks)
        except CascadeError:
            raise
        except Exception as exc:  # the whole round trip failed: every retriever is degraded alike
            log.exception("retrievers %s failed", ", ".join(ks))
            answers = {n: exc for n in ks}
        now = time.perf_counter()
        out = []
        for name in ks:
            got = answers.get(name, LookupError(f"the backend returned no answer for retriever {name!r}"))
            hits, error = (got, None) if isinstance(got, list) else ([], f"{type(got).__name__}: {got}")
            if error:
                log.warning("retriever %s failed: %s", name, error)
            out.append((hits, StageTrace(name, "retriever", 0, len(hits), len(hits), (now - t) * 1e3,
                                         (now - t0) * 1e3, [h.id for h in hits], [h.score for h in hits], error)))
        return out

    async def retrieve(self, query: Query, t0: float | None = None) -> "Retrieved":
        """Every retriever's hits for a validated query: what fusion starts from, shared by profiles of an index."""
        t0 = time.perf_counter() if t0 is None else t0
        if self.multi is not None:
            pairs = await self._retrieve_many(query, t0)
        else:
            pairs = await asyncio.gather(*(self._retrieve(n, r, query, t0) for n, r in self.retrievers.items()))
        traces = [tr for _, tr in pairs]
        if all(tr.error for tr in traces):
            raise AllRetrieversFailed("every retriever failed: " + "; ".join(f"{t.name}: {t.error}" for t in traces))
        return Retrieved({tr.name: hits for hits, tr in pairs}, traces, (time.perf_counter() - t0) * 1e3)

    async def search(self, query: Query, *, validated: bool = False, budget_ms: float | None = None,
                     retrieved: "Retrieved | None" = None) -> SearchResult:
        """Rank one query. ``budget_ms``: a latency budget (none by default; the service passes the request's,
        capped by ``limits.budget_ms``). ``retrieved``: hits already fetched for this query (several profiles
        evaluated on one retrieval)."""
        t0 = time.perf_counter()
        if retrieved is not None:  # shared retrieval: its time counts as this search's own first steps
            t0 -= retrieved.ms / 1e3
        deadline = None if budget_ms is None else time.monotonic() + budget_ms / 1e3
        if not validated:
            query = self.validate(query)
        cands, traces = await self.candidates(query, t0, retrieved=retrieved)
        cands = await self.run_stages(query, cands, traces, t0=t0, deadline=deadline)
        await self._fill_fields(cands, query.offset, query.offset + query.size)  # the page the caller sees
        return SearchResult(query, cands, traces, (time.perf_counter() - t0) * 1e3, self.profile)

    async def rerank(self, query: Query, candidates: Candidates, *, budget_ms: float | None = None) -> SearchResult:
        """Only this profile's stages, over candidates the caller brings (no retrieval, fusion or features).

        What the rerank APIs serve: documents sent in the request, ranked by the profile's query-independent
        stages (a stage that reads features needs the index's candidates, so callers check ``reads_features``).
        ``query`` must be validated; ``candidates`` carry their ``fields`` (the text the stages read).
        """
        t0 = time.perf_counter()
        deadline = None if budget_ms is None else time.monotonic() + budget_ms / 1e3
        traces: list[StageTrace] = []
        cands = await self.run_stages(query, candidates, traces, t0=t0, deadline=deadline)
        return SearchResult(query, cands, traces, (time.perf_counter() - t0) * 1e3, self.profile)

    async def run_stages(self, query: Query, cands: Candidates, traces: list[StageTrace], *, t0: float,
                         deadline: float | None = None) -> Candidates:
        """Each stage in order over ``cands``, appending its trace to ``traces``; a failing stage is skipped
        (previous order kept, trace flagged) and a stage the budget cannot afford is shrunk or skipped.
        A stage with ``early_exit`` is skipped (previous order kept, cut to its ``keep``) when the step before it
        is confident about this query; the trace's ``early_exit`` says why."""
        previous = next((tr.name for tr in reversed(traces) if tr.kind != "features"), "the caller's order")
        for stage in self.stages:
            t = time.perf_counter()
            error = note = cut = None
            usage: dict[str, int] = {}
            # Only over an order some step produced: the rerank APIs' first stage sees the caller's order, unscored.
            exited = early_exit(getattr(stage, "early_exit", None), cands.score, query.text or "") if traces else None
            window = None if exited else self._affordable(stage, cands, deadline)
            if exited:
                out, note = cands.head(stage.keep), exited.note(previous)
            elif window == 0:
                out, note, cut = cands, "skipped: the remaining budget cannot cover one candidate", "skipped"
            else:
                head, tail = (cands, None) if window is None else (cands.head(window), cands.take(np.arange(window, len(cands))))
                try:
                    if stage.text_fields:
                        await self._fill_fields(head, 0, min(len(head), stage.rerank or len(head)))
                    with metered() as usage:
                        out = await stage(query, head, deadline)
                    if tail is not None and len(tail):  # shrunk: the unscored rest follows in its previous order
                        tail.score = below(out.score, tail.score)
                        out = out.concat(tail).head(stage.keep)
                        note, cut = f"shrunk to {window} candidates to fit the budget", "shrunk"
                except Exception as exc:  # degrade: keep the previous order, flag the stage
                    log.exception("stage %s failed", stage.name)
                    out, error, note, cut = cands, error_text(exc), None, None
            now = time.perf_counter()
            scored = 0 if error or cut == "skipped" or exited else out.scored.get(stage.name, 0)
            if scored:
                self._costs.observe(stage.name, (now - t) * 1e3, scored)
            traces.append(StageTrace(stage.name, stage.kind, len(cands), len(out), scored, (now - t) * 1e3,
                                     (now - t0) * 1e3, list(out.ids), out.score.tolist(), error, note, cut,
                                     stage.cost_unit, {} if error else dict(usage),
                                     exited.as_dict() if exited else None))
            cands, previous = out, (previous if exited or error or cut == "skipped" else stage.name)
        return cands

    def _affordable(self, stage: Stage, cands: Candidates, deadline: float | None) -> int | None:
        """How many candidates the stage may score within the deadline (None: no limit needed).

        Costs are learned per cost unit (a pair, a row, an LLM call); ``stage.cost_units(n)`` says how many
        units scoring ``n`` candidates takes (a listwise LLM: one call per window, not per candidate).
        """
        if deadline is None:
            return None
        want = min(len(cands), stage.rerank or len(cands))
        units = getattr(stage, "cost_units", None) or (lambda n: n)
        est = self._costs.estimate(stage.name, units(want))
        left_ms = (deadline - time.monotonic()) * 1e3
        if est is None or est <= left_ms:
            return None
        per_unit = self._costs.per_item(stage.name)
        if per_unit <= 0:
            return None
        fits = int(left_ms / per_unit)  # units the time left pays for
        lo, hi = 0, want  # the most candidates whose units fit (units(n) grows with n)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if units(mid) <= fits:
                lo = mid
            else:
                hi = mid - 1
        return lo

    async def candidates(self, query: Query, t0: float | None = None, *, features: bool | None = None,
                         retrieved: "Retrieved | None" = None) -> tuple[Candidates, list[StageTrace]]:
        """Retrieval, fusion and (when a stage reads them, or ``features=True``) features: what stages start from.

        ``query`` must be validated already (``search`` does it). Feature logs pass
        ``features=True`` so that they record exactly what the LTR stage will see.
        """
        if t0 is None:
            t0 = time.perf_counter() - (retrieved.ms / 1e3 if retrieved is not None else 0.0)
        if retrieved is None:
            retrieved = await self.retrieve(query, t0)
            traces = list(retrieved.traces)
        else:  # shared retrieval: ``t0`` already lies ``retrieved.ms`` back (see ``search``)
            traces = [dataclasses.replace(t) for t in retrieved.traces]
        results = retrieved.hits

        t = time.perf_counter()
        cands = fuse(results, self.config.fusion)
        now = time.perf_counter()
        n_in = len({h.id for hits in results.values() for h in hits})
        traces.append(StageTrace("fusion", "fusion", n_in, len(cands), n_in, (now - t) * 1e3, (now - t0) * 1e3,
                                 list(cands.ids), cands.score.tolist()))

        want = self.computes_features if features is None else (features and self.features is not None)
        if want:
            t = time.perf_counter()
            error = None
            parts: list[Any] = []
            try:
                both = cands
                fill = (lambda: self._fill_fields(both, 0, len(both))) if getattr(self.features, "needs_fields",
                                                                                  True) else None
                # Stored fields and the backend's own feature round trip (if any) are fetched concurrently.
                cands, parts = await self.features.run(query, cands, fill=fill)
            except Exception as exc:  # stages that need features will fail and be flagged too
                log.exception("feature extraction failed")
                error = error_text(exc)
            now = time.perf_counter()
            for part in parts:  # e.g. keyword_features: its own time; a failure flags it, features still serve
                traces.append(StageTrace(part.name, "features", len(cands), len(cands),
                                         0 if part.error else len(cands), part.ms, (now - t0) * 1e3,
                                         list(cands.ids), cands.score.tolist(), part.error))
            traces.append(StageTrace("features", "features", len(cands), len(cands), 0 if error else len(cands),
                                     (now - t) * 1e3, (now - t0) * 1e3, list(cands.ids), cands.score.tolist(), error))
        return cands, traces

    async def _fill_fields(self, cands: Candidates, start: int, stop: int) -> None:
        """Fetch stored fields of rows ``start:stop`` that lack them (only what is about to be read)."""
        missing = [i for i in range(max(0, start), min(stop, len(cands))) if cands.fields[i] is None]
        if missing and self.documents is not None:
            docs = await self.documents.fetch([cands.ids[i] for i in missing])
            for i, d in zip(missing, docs):
                cands.fields[i] = d


@dataclass
class Retrieved:
    """Every retriever's hits for one query, with their traces and the time they took."""

    hits: dict[str, list[Hit]]
    traces: list[StageTrace]
    ms: float
