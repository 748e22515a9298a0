"""The embedded backend: tantivy for BM25 and filters, faiss for kNN, a row-addressed document store.

Everything lives in one folder per index (``CASCADE_INDEX_DIR/NAME``)::

    manifest.json          what was built, from which config fingerprint and embedder
    tantivy/               inverted index: text fields (BM25), keyword/numeric/date fields (filters)
    docs.jsonl, docs.offsets.npy   stored fields by row, read on demand
    vectors.npy            L2-normalized float32 embeddings by row
    hnsw.faiss             an HNSW graph, only above ``exact_max_docs`` documents
    columns.npz, columns.json      filter columns for kNN filter bitmaps

Rows (0..n-1) are the internal ids shared by all parts; tantivy keeps the row
in a fast field so a BM25 hit maps to a row without reading stored documents.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import mmap
import threading
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import tantivy

from cascade.candidates import Hit
from cascade.config import BM25Config, IndexConfig, KnnConfig
from cascade.errors import ConfigError, IndexNotFound
from cascade.query import Filter, Query, TermFilter
from cascade.settings import Settings
from connectors.analysis import analyze
from cascade.models.embedder import Embedder, load_embedder
from connectors.termindex import FieldTerms, load_term_index

from connectors.embedded_build import FORMAT_VERSION, ROW, BuildReport, build_index, index_exists, register_analyzers

__all__ = ["FORMAT_VERSION", "ROW", "BuildReport", "EmbeddedBackend", "EmbeddedBM25", "EmbeddedKnn", "build_index",
           "index_exists"]

# ``fetch`` parses up to this many rows inline on the event loop; more go to a worker thread.
# A handful of rows parses in microseconds, cheaper than the thread hop (scheduling, a future, a wakeup).
INLINE_FETCH_ROWS = 16


class EmbeddedBackend:
    """An opened embedded index: a document source and a factory of BM25 and kNN retrievers."""

    def __init__(self, cfg: IndexConfig, settings: Settings):
        self.cfg, self.settings = cfg, settings
        self.path = Path(settings.index_dir) / cfg.index
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise IndexNotFound(cfg.index, str(settings.index_dir))
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT_VERSION:
            raise ConfigError(str(manifest), "format", f"index format {self.manifest.get('format')} is not "
                              f"{FORMAT_VERSION}; rebuild with `cascade index --rebuild`")
        built = self.manifest.get("fields", {})
        for name, f in cfg.fields.items():
            if built.get(name) != f.type:
                raise ConfigError(f"{cfg.index}.yaml", f"fields.{name}",
                                  f"the index was built with {built.get(name) or 'no such field'}; "
                                  f"rebuild it with `cascade index --rebuild` after changing fields")
        self.index = tantivy.Index.open(str(self.path / "tantivy"))
        register_analyzers(self.index)
        self.schema = self.index.schema
        self.ids: list[str] = json.loads((self.path / "ids.json").read_text())
        self.row_of = {d: i for i, d in enumerate(self.ids)}
        self.offsets = np.load(self.path / "docs.offsets.npy")
        self._docs_fh = open(self.path / "docs.jsonl", "rb")
        self._docs = mmap.mmap(self._docs_fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.vectors = np.load(self.path / "vectors.npy", mmap_mode="r")
        cols = np.load(self.path / "columns.npz", allow_pickle=False)
        self.columns = {k: cols[k] for k in cols.files}
        self.vocabs = {n: {v: i for i, v in enumerate(vals)}
                       for n, vals in json.loads((self.path / "columns.json").read_text()).items()}
        self._embedder: Embedder | None = None
        self._emb_lock = threading.Lock()
        self._ann_lock = threading.Lock()  # guards the lazy faiss indexes below
        self._flat = None
        self._hnsw = None
        self._terms: dict[str, FieldTerms] | None = None

    async def close(self) -> None:
        """Release the mmap and file handle of the document store and the kNN indexes (a reload calls this)."""
        self._flat = self._hnsw = None
        docs, self._docs = self._docs, None
        if docs is not None:
            try:
                docs.close()
            except BufferError:  # a fetch still holds a slice: the mmap goes when it is collected
                pass
        self._docs_fh.close()

    # DocumentSource
    def fetch_rows(self, rows: Iterable[int]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            rec = json.loads(self._docs[self.offsets[r]: self.offsets[r + 1]])
            rec.pop("_id", None)
            out.append(rec)
        return out

    async def fetch(self, ids: list[str]) -> list[dict[str, Any] | None]:
        rows = [self.row_of.get(i) for i in ids]
        known = [r for r in rows if r is not None]
        if len(known) > INLINE_FETCH_ROWS:  # parsing many rows' JSON would stall the event loop
            found = await asyncio.to_thread(self.fetch_rows, known)
        else:
            found = self.fetch_rows(known)
        it = iter(found)
        return [next(it) if r is not None else None for r in rows]

    def retriever(self, name: str, rcfg: BM25Config | KnnConfig):
        if isinstance(rcfg, BM25Config):
            return EmbeddedBM25(name, self, self.cfg.bm25_fields(rcfg))
        return EmbeddedKnn(name, self, rcfg)

    @property
    def embedder(self) -> Embedder:
        with self._emb_lock:
            if self._embedder is None:
                e = self.cfg.embedder
                self._embedder = load_embedder(e.model, self.settings, e.max_length, e.batch_size, e.dtype)
                if self._embedder.dim != self.manifest["dim"]:
                    raise ConfigError(f"{self.cfg.index}.yaml", "embedder.model",
                                      f"{self._embedder.name} gives {self._embedder.dim}-d vectors but the index "
                                      f"holds {self.manifest['dim']}-d ones; rebuild the index")
            return self._embedder

    # statistics for features
    def rows(self, ids: list[str]) -> np.ndarray:
        return np.array([self.row_of[i] for i in ids], dtype=np.int64)

    def field_terms(self, field: str) -> FieldTerms:
        """Forward index + global statistics of a text field (the whole index, not a shard)."""
        if self._terms is None:
            self._terms = load_term_index(self.path)
        return self._terms[field]

    def doc_vectors(self, ids: list[str]) -> np.ndarray:
        """Stored embeddings of ``ids`` (the ones kNN searched): semantic features need no model call."""
        return np.asarray(self.vectors[self.rows(ids)], dtype=np.float32)

    # filters
    def tantivy_filter(self, filters: tuple[Filter, ...]) -> tantivy.Query | None:
        if not filters:
            return None
        parts = [(tantivy.Occur.Must, self._tantivy_clause(f)) for f in filters]
        return tantivy.Query.boolean_query(parts)

    def _tantivy_clause(self, f: Filter) -> tantivy.Query:
        ft = {"integer": tantivy.FieldType.Integer, "float": tantivy.FieldType.Float, "date": tantivy.FieldType.Date}
        conv = (lambda v: dt.datetime.fromtimestamp(v, dt.timezone.utc)) if f.type == "date" else (
            (lambda v: int(v)) if f.type == "integer" else (lambda v: float(v)))
        if isinstance(f, TermFilter):
            if f.type == "keyword":
                return tantivy.Query.term_set_query(self.schema, f.field, list(f.values))
            return tantivy.Query.boolean_query([
                (tantivy.Occur.Should, tantivy.Query.range_query(self.schema, f.field, ft[f.type], conv(v), conv(v)))
                for v in f.values])
        lo = f.gt if f.gt is not None else f.gte
        hi = f.lt if f.lt is not None else f.lte
        return tantivy.Query.range_query(
            self.schema, f.field, ft[f.type],
            None if lo is None else conv(lo), None if hi is None else conv(hi),
            include_lower=f.gt is None, include_upper=f.lt is None)

    def filter_mask(self, filters: tuple[Filter, ...]) -> np.ndarray | None:
        """Rows passing every filter, as a boolean array (the same semantics as the tantivy clauses)."""
        if not filters:
            return None
        n = len(self.ids)
        mask = np.ones(n, dtype=bool)
        for f in filters:
            if f.type == "keyword":
                offs, codes = self.columns[f"kw.{f.field}.offsets"], self.columns[f"kw.{f.field}.codes"]
                wanted = [self.vocabs[f.field][v] for v in f.values if v in self.vocabs[f.field]]
                m = np.zeros(n, dtype=bool)
                if wanted:
                    doc_of = np.repeat(np.arange(n), np.diff(offs))
                    m[doc_of[np.isin(codes, wanted)]] = True
            else:
                col = self.columns[f"num.{f.field}"]
                with np.errstate(invalid="ignore"):
                    if isinstance(f, TermFilter):
                        m = np.isin(col, np.asarray(f.values, dtype=np.float64))
                    else:
                        m = ~np.isnan(col)
                        if f.gt is not None: m &= col > f.gt
                        if f.gte is not None: m &= col >= f.gte
                        if f.lt is not None: m &= col < f.lt
                        if f.lte is not None: m &= col <= f.lte
            mask &= m
        return mask

    # kNN indexes, built lazily
    def flat(self):
        """The exact inner-product index over all vectors, built once on first use."""
        if self._flat is None:  # double-checked: concurrent first queries must not build it twice
            with self._ann_lock:
                if self._flat is None:
                    import faiss

                    idx = faiss.IndexFlatIP(self.vectors.shape[1])
                    idx.add(np.ascontiguousarray(self.vectors))
                    self._flat = idx
        return self._flat

    def hnsw(self):
        """The stored HNSW graph (None when the index has none), read once on first use."""
        if self._hnsw is None and (self.path / "hnsw.faiss").exists():
            with self._ann_lock:
                if self._hnsw is None:
                    import faiss

                    self._hnsw = faiss.read_index(str(self.path / "hnsw.faiss"))
        return self._hnsw


class EmbeddedBM25:
    """BM25 summed over text fields with per-field boosts (tantivy's Lucene-style BM25, k1=1.2, b=0.75)."""

    def __init__(self, name: str, backend: EmbeddedBackend, boosts: dict[str, float]):
        self.name, self.backend, self.boosts = name, backend, boosts
        self._kinds = {backend.cfg.fields[f].analyzer for f in boosts}

    def tokens(self, text: str) -> dict[str, list[str]]:
        return {k: analyze(k, text) for k in self._kinds}

    def build_query(self, query: Query) -> tantivy.Query | None:
        toks = self.tokens(query.text)
        schema = self.backend.schema
        clauses = []
        for field, boost in self.boosts.items():
            for tok in toks[self.backend.cfg.fields[field].analyzer]:
                q = tantivy.Query.term_query(schema, field, tok, index_option="freq")
                clauses.append((tantivy.Occur.Should, q if boost == 1.0 else tantivy.Query.boost_query(q, boost)))
        if not clauses:
            return None
        text_q = tantivy.Query.boolean_query(clauses)
        flt = self.backend.tantivy_filter(query.parsed_filters)
        if flt is None:
            return text_q
        return tantivy.Query.boolean_query([
            (tantivy.Occur.Must, text_q), (tantivy.Occur.Must, tantivy.Query.const_score_query(flt, 0.0))])

    def search(self, query: Query, k: int) -> list[Hit]:
        q = self.build_query(query)
        if q is None:  # only stop words: BM25 has nothing to say
            return []
        searcher = self.backend.index.searcher()
        res = searcher.search(q, k, count=False)
        if not res.hits:
            return []
        rows = searcher.fast_field_values(ROW, [a for _, a in res.hits])
        ids = self.backend.ids
        return [Hit(ids[r], float(s)) for (s, _), r in zip(res.hits, rows)]

    async def retrieve(self, query: Query, k: int) -> list[Hit]:
        return await asyncio.to_thread(self.search, query, k)


class EmbeddedKnn:
    """Cosine kNN over the stored embeddings: exact (with a filter bitmap) or HNSW for large indexes."""

    def __init__(self, name: str, backend: EmbeddedBackend, cfg: KnnConfig):
        self.name, self.backend, self.cfg = name, backend, cfg

    def search_vector(self, qv: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        b = self.backend
        n = len(b.ids)
        k = min(k, n)
        qv = qv.reshape(1, -1).astype(np.float32)
        hnsw = b.hnsw() if n > self.cfg.exact_max_docs else None
        if mask is not None:
            allowed = int(mask.sum())
            if allowed == 0:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            k = min(k, allowed)
            if hnsw is None or allowed <= max(20 * k, n // 50):
                # Few rows pass: scoring them all is exact and cheaper than walking a filtered graph.
                rows = np.flatnonzero(mask)
                sims = np.asarray(b.vectors[rows]) @ qv[0]
                top = np.argpartition(-sims, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
                top = top[np.argsort(-sims[top], kind="stable")]
                return rows[top], sims[top]
            sel = faiss.IDSelectorBitmap(n, np.packbits(mask, bitorder="little"))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.cfg.ef_search, 2 * k))
            D, I = hnsw.search(qv, k, params=params)
        elif hnsw is not None:
            D, I = hnsw.search(qv, k, params=faiss.SearchParametersHNSW(efSearch=max(self.cfg.ef_search, k)))
        else:
            D, I = b.flat().search(qv, k)
        keep = I[0] >= 0
        return I[0][keep].astype(np.int64), D[0][keep]

    def search(self, query: Query, k: int) -> list[Hit]:
        qv = self.backend.embedder.encode_query(query.text)
        rows, sims = self.search_vector(qv, k, self.backend.filter_mask(query.parsed_filters))
        ids = self.backend.ids
        return [Hit(ids[r], float(s)) for r, s in zip(rows, sims)]

    async def retrieve(self, query: Query, k: int) -> list[Hit]:
        return await asyncio.to_thread(self.search, query, k)


