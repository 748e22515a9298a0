"""The OpenSearch backend: BM25 and kNN candidates in one ``_msearch``, stored fields from ``_source``.

Opening the backend checks the index once (it exists, it has the configured
fields, its vectors have the embedder's dimension), so a misconfigured index
fails at start-up with the names and numbers involved rather than on the first
query.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from cascade.candidates import Hit
from cascade.config import BM25Config, IndexConfig, KnnConfig, OpenSearchBackendConfig
from cascade.errors import BackendError
from cascade.query import Query
from cascade.settings import Settings
from connectors.opensearch import queries as Q
from connectors.opensearch.client import Cluster, run_sync
from connectors.opensearch.mapping import mapping_problems, uses_vectors
from connectors.opensearch.responses import (FieldStats, error_reason, missing_index, parse_doc_count, parse_hits,
                                             parse_termvectors, source_to_fields)


class OpenSearchBackend:
    """A cluster index as a document source, a factory of retrievers, and a multi-retriever."""

    def __init__(self, cfg: IndexConfig, settings: Settings, *, check: bool = True, clock=time.monotonic):
        if not isinstance(cfg.backend, OpenSearchBackendConfig):
            raise TypeError("OpenSearchBackend needs a config with backend.type: opensearch")
        self.cfg, self.settings, self.b = cfg, settings, cfg.backend
        self.index = self.b.index_name(cfg.index)
        self.cluster = Cluster(self.b, f"{cfg.index}.yaml")
        self.sources = Q.source_fields(cfg, self.b)
        self._embedder = None
        self._emb_lock = threading.Lock()
        self._clock = clock
        self._stats: dict[tuple[str, tuple[str, ...]], tuple[float, FieldStats]] = {}
        self._retriever_cfgs: dict[str, BM25Config | KnnConfig] = dict(cfg.retrievers)
        if check:
            run_sync(self.check)

    # ------------------------------------------------------------ start-up

    @property
    def needs_embedder(self) -> bool:
        return self.b.mode == "knn" and uses_vectors(self.cfg)

    @property
    def embedder(self):
        with self._emb_lock:
            if self._embedder is None:
                from cascade.models.embedder import load_embedder

                e = self.cfg.embedder
                self._embedder = load_embedder(e.model, self.settings, e.max_length, e.batch_size, e.dtype)
            return self._embedder

    async def check(self) -> None:
        """The index exists and fits the config; raises BackendError naming what does not fit."""
        mapping = await self.cluster.call(f"GET {self.index}/_mapping",
                                          lambda c: c.indices.get_mapping(index=self.index))
        dim = (await asyncio.to_thread(lambda: self.embedder.dim)) if self.needs_embedder else None
        missing, dim_problem = mapping_problems(mapping, self.cfg, self.b, dim)
        if missing:
            raise BackendError(f"index {self.index!r} at {self.cluster.hosts} lacks fields that {self.cfg.index}.yaml "
                               f"configures: {'; '.join(missing)} (map them with backend.field_map, or rebuild with "
                               f"`cascade index --backend opensearch --rebuild`)")
        if dim_problem:
            raise BackendError(f"index {self.index!r}: {dim_problem} ({self.embedder.name}); use the embedder the "
                               f"index was built with, or rebuild it with `cascade index --backend opensearch --rebuild`")

    # ------------------------------------------------------------ retrieval

    def retriever(self, name: str, rcfg: BM25Config | KnnConfig) -> "OpenSearchRetriever":
        self._retriever_cfgs[name] = rcfg
        return OpenSearchRetriever(name, self, rcfg)

    async def query_vector(self, text: str) -> list[float] | None:
        if not self.needs_embedder:
            return None
        vec = await asyncio.to_thread(lambda: self.embedder.encode([text])[0])
        return [float(x) for x in vec]

    def bodies(self, query: Query, ks: dict[str, int], vector: list[float] | None) -> dict[str, dict[str, Any]]:
        """The search body of each named retriever (what one ``_msearch`` carries)."""
        out = {}
        for name, k in ks.items():
            rcfg = self._retriever_cfgs[name]
            if isinstance(rcfg, BM25Config):
                q = Q.lexical_query(query, self.cfg.bm25_fields(rcfg), self.b)
            else:
                q = Q.vector_query(query, k, self.b, vector)
            out[name] = Q.search_body(q, k, self.sources)
        return out

    def hybrid(self, query: Query, ks: dict[str, int], vector: list[float] | None) -> dict[str, Any]:
        parts = [b["query"] for b in self.bodies(query, ks, vector).values()]
        return Q.hybrid_body(parts, max(ks.values()), self.sources)

    async def retrieve_many(self, query: Query, ks: dict[str, int]) -> dict[str, list[Hit] | BaseException]:
        """One round trip for every retriever; an item the cluster rejects degrades only its retriever."""
        needs_vec = any(isinstance(self._retriever_cfgs[n], KnnConfig) for n in ks)
        vector = await self.query_vector(query.text) if needs_vec else None
        if self.b.hybrid_pipeline:
            body = self.hybrid(query, ks, vector)
            resp = await self.cluster.call(
                f"the hybrid search on {self.index!r} (pipeline {self.b.hybrid_pipeline!r})",
                lambda c: c.search(index=self.index, body=body, params={"search_pipeline": self.b.hybrid_pipeline}))
            hits = parse_hits(resp, self.cfg, self.b)
            # OpenSearch fused the parts itself; every retriever reports that one list, so cascade's
            # fusion of identical lists keeps OpenSearch's order.
            return {n: list(hits) for n in ks}
        bodies = self.bodies(query, ks, vector)
        lines = Q.msearch_lines(self.index, list(bodies.values()))
        resp = await self.cluster.call(f"_msearch on {self.index!r}", lambda c: c.msearch(body=lines))
        out: dict[str, list[Hit] | BaseException] = {}
        for name, item in zip(bodies, resp.get("responses") or []):
            if "error" in item:
                status = item.get("status")
                if missing_index(item) is not None:
                    raise self.cluster.error(item, status, f"the {name} search")
                out[name] = BackendError(f"OpenSearch rejected the {name} search ({status}): {error_reason(item)}",
                                         status)
            else:
                out[name] = parse_hits(item, self.cfg, self.b)
        errors = [v for v in out.values() if isinstance(v, BaseException)]
        if errors and len(errors) == len(ks):
            raise BackendError("; ".join(str(e) for e in errors), getattr(errors[0], "status", None))
        return out

    # ------------------------------------------------------------ documents

    async def fetch(self, ids: list[str]) -> list[dict[str, Any] | None]:
        if not ids:
            return []
        resp = await self.cluster.call(
            f"_mget on {self.index!r}",
            lambda c: c.mget(index=self.index, body={"docs": [{"_id": i, "_source": self.sources} for i in ids]}))
        found = {d["_id"]: source_to_fields(d.get("_source"), self.cfg, self.b)
                 for d in resp.get("docs") or [] if d.get("found")}
        return [found.get(i) for i in ids]

    # ------------------------------------------------------------ statistics

    async def field_stats(self, field: str, terms: list[str]) -> FieldStats:
        """Document frequency of ``terms`` (as the field's analyzer sees them), average length, doc counts.

        For BM25-style LTR features; cached for ``backend.stats_ttl_s`` because
        corpus statistics move slowly and queries repeat.
        """
        if field not in self.cfg.fields or self.cfg.fields[field].type != "text":
            raise BackendError(f"field_stats: {field!r} is not a text field of {self.cfg.index}")
        key = (field, tuple(sorted(set(terms))))
        now = self._clock()
        hit = self._stats.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        target = self.b.field(field)
        body = Q.termvectors_body(target, key[1])
        tv = await self.cluster.call(f"_termvectors on {self.index!r}",
                                     lambda c: c.termvectors(index=self.index, body=body))
        st = await self.cluster.call(f"_stats on {self.index!r}",
                                     lambda c: c.indices.stats(index=self.index, metric="docs"))
        parsed = parse_termvectors(tv, target)
        stats = FieldStats(field, parsed.doc_count, parsed.sum_ttf, parsed.doc_freq, parse_doc_count(st))
        self._stats[key] = (now + self.b.stats_ttl_s, stats)
        return stats

    def feature_source(self, cfg: IndexConfig) -> Any:
        """LTR features on this backend: keyword features from the cluster's scoring (one ``_msearch``)."""
        from connectors.opensearch.features import OpenSearchFeatureSource

        ft = cfg.features
        text = {n: f.analyzer for n, f in cfg.fields.items() if f.type == "text"}
        keyword = {f: text[f] for f in (ft.keyword.fields or list(text))} if ft is not None and ft.keyword else {}
        knn = [n for n, r in cfg.retrievers.items() if isinstance(r, KnnConfig)]
        return OpenSearchFeatureSource(self, keyword, cfg.embedder.fields, knn)

    async def close(self) -> None:
        """Close the cluster session of this event loop (a reload calls this)."""
        await self.cluster.close()

    aclose = close


class OpenSearchRetriever:
    """One retriever of the backend; alone it sends an ``_msearch`` of one (the controller batches them)."""

    def __init__(self, name: str, backend: OpenSearchBackend, cfg: BM25Config | KnnConfig):
        self.name, self.backend, self.cfg = name, backend, cfg

    async def retrieve(self, query: Query, k: int) -> list[Hit]:
        got = (await self.backend.retrieve_many(query, {self.name: k}))[self.name]
        if isinstance(got, BaseException):
            raise got
        return got
