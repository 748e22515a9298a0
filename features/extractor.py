"""Assembling a candidate set's feature matrix from the groups an index declares.

Features are computed in the controller from data already fetched (stored
fields, retriever provenance, the backend's term statistics and vectors), over
the whole candidate set at once; no engine plugin and no second query.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import numpy as np

from cascade.candidates import Candidates
from cascade.errors import ConfigError
from connectors.analysis import analyze
from features.context import FeatureContext, FeatureSource  # re-exported: older code imports them from here
from features.groups import NumericGroup, QueryGroup, RecencyGroup, RetrievalGroup, SemanticGroup
from features.keyword import KeywordGroup
from features.personal import behavior_group
from features.provenance import keyword_analyzers

if TYPE_CHECKING:
    from cascade.config import IndexConfig
    from cascade.query import Query


class EmbeddedFeatureSource:
    """Statistics from the embedded index's forward index and stored vectors: no tokenizing, no model calls."""

    def __init__(self, backend: Any):
        self.backend = backend

    def _rows(self, ctx: FeatureContext) -> np.ndarray:
        if "rows" not in ctx.memo:
            ctx.memo["rows"] = self.backend.rows(ctx.candidates.ids)
        return ctx.memo["rows"]

    def term_stats(self, ctx, field, kind, terms):
        ft = self.backend.field_terms(field)
        rows = self._rows(ctx)
        return ft.term_freqs(rows, terms), ft.lengths[rows].astype(np.float64), ft.doc_freqs(terms), ft.num_docs, ft.avg_length

    def cosines(self, ctx):
        if not len(ctx.candidates):
            return np.zeros(0)
        q = self.backend.embedder.encode_query(ctx.query.text)
        return np.asarray(self.backend.vectors[self._rows(ctx)], dtype=np.float32) @ q


class FieldsFeatureSource:
    """For backends without a forward index: tokenize candidates' stored fields and ask for global statistics.

    The backend must offer ``collection_stats(field, terms) -> (df, num_docs, avg_length)``
    (document frequencies across the whole index) and an ``embedder``.
    """

    needs_fields = True  # tokenizes stored fields: the controller fetches them for every candidate first

    def __init__(self, backend: Any, embed_fields: list[str], knn_names: list[str]):
        self.backend, self.embed_fields, self.knn_names = backend, embed_fields, knn_names

    def term_stats(self, ctx, field, kind, terms):
        candidates = ctx.candidates
        col = {t: j for j, t in enumerate(terms)}
        tf = np.zeros((len(candidates), len(terms)))
        dl = np.zeros(len(candidates))
        for i, doc in enumerate(candidates.fields):
            toks = analyze(kind, str((doc or {}).get(field) or ""))
            dl[i] = len(toks)
            for t in toks:
                j = col.get(t)
                if j is not None:
                    tf[i, j] += 1
        df, num_docs, avgdl = self.backend.collection_stats(field, terms)
        return tf, dl, np.asarray(df, dtype=np.float64), int(num_docs), float(avgdl)

    def cosines(self, ctx):
        text, candidates = ctx.query.text, ctx.candidates
        out = np.full(len(candidates), np.nan)
        for r in self.knn_names:  # cosine kNN already scored these
            s = candidates.retriever_scores.get(r)
            if s is not None:
                out = np.where(np.isnan(out), s, out)
        todo = np.flatnonzero(np.isnan(out))
        if len(todo):
            emb = self.backend.embedder
            docs = emb.encode([candidates.text(i, self.embed_fields) for i in todo])
            out[todo] = docs @ emb.encode_query(text)
        return out


class FeatureExtractor:
    """The feature set of one index; ``names`` is a pure function of the config."""

    def __init__(self, cfg: "IndexConfig", source: FeatureSource | None = None, settings: Any = None):
        ft = cfg.features
        if ft is None:
            raise ConfigError(f"{cfg.index}.yaml", "features", "no feature set declared")
        self.cfg, self.source, self.version = cfg, source, ft.version
        text = {n: f.analyzer for n, f in cfg.fields.items() if f.type == "text"}
        self.groups: list[Any] = []
        if ft.keyword:
            fields = ft.keyword.fields or list(text)
            self.groups.append(KeywordGroup({f: text[f] for f in fields}, ft.keyword.k1, ft.keyword.b))
        if ft.retrieval:
            self.groups.append(RetrievalGroup(list(cfg.retrievers)))
        if ft.semantic:
            self.groups.append(SemanticGroup())
        if ft.recency:
            self.groups.append(RecencyGroup(ft.recency))
        if ft.numeric:
            self.groups.append(NumericGroup(ft.numeric))
        if ft.query:
            self.groups.append(QueryGroup(next(iter(text.values()), "english")))
        behavior = behavior_group(cfg, settings)  # popularity / personal: counts from the event stream, in Redis
        if behavior is not None:
            self.groups.append(behavior)
        # Rankings depend on who asks (and on live counts): the service keys its result cache by user and segment.
        self.behavioral = behavior is not None
        self.names = [n for g in self.groups for n in g.names()]
        # Where keyword features come from: a model trained on one source's values is refused on another's.
        self.keyword_source: str | None = getattr(source, "keyword_source", "embedded") if ft.keyword else None
        self.keyword_analyzers: dict[str, str] = keyword_analyzers(cfg, self.names)
        # Phrase matches, dates and numeric fields are read from stored fields (so is every keyword feature
        # on a backend without a forward index): the controller fetches them for every candidate first.
        self.needs_fields = bool(ft.keyword or ft.recency or ft.numeric or ft.personal) or \
            getattr(source, "needs_fields", False)
        self.fingerprint = ft.fingerprint()

    def compute(self, query: "Query", candidates: Candidates, memo: dict[str, Any] | None = None) -> np.ndarray:
        if self.source is None:
            raise RuntimeError("feature extractor has no data source")
        n = len(candidates)
        ctx = FeatureContext(query, candidates, self.source, dict(memo or {}))
        blocks = [np.asarray(g.compute(ctx), dtype=np.float64).reshape(n, -1) for g in self.groups]
        x = np.hstack(blocks) if blocks else np.zeros((n, 0))
        bad = ~np.isfinite(x)
        if bad.any():  # a defined value, never NaN passed on silently; the column says which feature it was
            cols = sorted({self.names[j] for j in np.flatnonzero(bad.any(axis=0))})
            raise ValueError(f"non-finite feature values in {cols}")
        return x.astype(np.float32)

    async def run(self, query: "Query", candidates: Candidates,
                  fill: Callable[[], Awaitable[None]] | None = None) -> tuple[Candidates, list[FeaturePart]]:
        """Compute the features; ``fill`` (fetching stored fields) runs concurrently with the source's own
        round trip (``prefetch``: OpenSearch's feature queries), whose time and failure come back as parts
        (name, ms, error) for the trace. A failed part leaves its features at their missing values."""
        fetchers = [getattr(self.source, "prefetch", None)] + [getattr(g, "prefetch", None) for g in self.groups]
        fetchers = [f for f in fetchers if f is not None] if len(candidates) else []
        jobs: list[Awaitable[Any]] = [fill()] if fill is not None else []
        jobs += [f(query, candidates) for f in fetchers]  # round trips of their own (OpenSearch, Redis)
        got = await asyncio.gather(*jobs) if jobs else []
        memo: dict[str, Any] = {}
        parts: list[Any] = []
        for m, p in got[len(got) - len(fetchers):]:
            memo.update(m)
            parts += p
        x = (await asyncio.to_thread(self.compute, query, candidates, memo) if len(candidates)
             else np.zeros((0, len(self.names)), np.float32))
        candidates.features, candidates.feature_names = x, list(self.names)
        return candidates, [FeaturePart(*p) for p in parts]

    async def __call__(self, query: "Query", candidates: Candidates) -> Candidates:
        return (await self.run(query, candidates))[0]


@dataclass(frozen=True)
class FeaturePart:
    """A part of the features step with its own trace entry (a backend's feature round trip)."""

    name: str
    ms: float
    error: str | None = None


def feature_source_for(backend: Any, cfg: "IndexConfig") -> FeatureSource:
    if hasattr(backend, "field_terms") and hasattr(backend, "doc_vectors"):
        return EmbeddedFeatureSource(backend)
    if hasattr(backend, "feature_source"):  # the backend knows how to get features from its engine
        return backend.feature_source(cfg)
    from cascade.config import KnnConfig

    if cfg.features is not None and cfg.features.keyword is not None and not hasattr(backend, "collection_stats"):
        raise ConfigError(f"{cfg.index}.yaml", "features.keyword",
                          f"the {cfg.backend.type} backend cannot give global term statistics for BM25 features yet; "
                          f"set `keyword: null` under features or use the embedded backend")
    knn = [n for n, r in cfg.retrievers.items() if isinstance(r, KnnConfig)]
    return FieldsFeatureSource(backend, cfg.embedder.fields, knn)
