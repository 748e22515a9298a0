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
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import tantivy

from cascade.candidates import Hit
from cascade.config import BM25Config, IndexConfig, KnnConfig
from cascade.errors import ConfigError, CorpusError, IndexNotFound
from cascade.query import Filter, Query, TermFilter, to_epoch_seconds
from cascade.settings import Settings
from connectors.analysis import ANALYZERS, analyze, analyzer
from connectors.records import typed_fields
from connectors.models import Embedder, load_embedder
from connectors.termindex import FieldTerms, TermIndexBuilder, load_term_index

FORMAT_VERSION = 2  # 2: terms.npz/terms.json forward index for BM25 features
ROW = "_row"
def _schema(cfg: IndexConfig) -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_integer_field(ROW, stored=False, indexed=False, fast=True)
    for name, f in cfg.fields.items():
        if f.type == "text":
            sb.add_text_field(name, stored=False, tokenizer_name=ANALYZERS[f.analyzer], index_option="freq")
        elif f.type == "keyword":
            sb.add_text_field(name, stored=False, tokenizer_name="raw", index_option="basic")
        elif f.type == "integer":
            sb.add_integer_field(name, stored=False, indexed=True, fast=True)
        elif f.type == "float":
            sb.add_float_field(name, stored=False, indexed=True, fast=True)
        elif f.type == "date":
            sb.add_date_field(name, stored=False, indexed=True, fast=True)
    return sb.build()


def _register(index: tantivy.Index) -> None:
    for kind, name in ANALYZERS.items():
        index.register_tokenizer(name, analyzer(kind))


# ---------------------------------------------------------------- ingest

@dataclass
class BuildReport:
    docs: int
    skipped: int
    seconds: float
    embed_seconds: float
    path: Path


def build_index(
    cfg: IndexConfig,
    records: Iterable[tuple[int, dict]],
    settings: Settings,
    *,
    source: str,
    total: int | None = None,
    skip_bad: bool = False,
    on_progress: Callable[[str, int, int | None], None] | None = None,
    chunk: int = 512,
) -> BuildReport:
    """Ingest ``records`` (line number, record) into a fresh index folder, replacing any previous one.

    The index is written beside its final place and renamed at the end, so an
    interrupted build never leaves a half index that a later run would reuse.
    """
    t0 = time.perf_counter()
    final = Path(settings.index_dir) / cfg.index
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.index}.building-", dir=final.parent))
    (tmp / "tantivy").mkdir()
    embedder = load_embedder(cfg.embedder.model, settings, cfg.embedder.max_length, cfg.embedder.batch_size,
                             cfg.embedder.dtype)

    schema = _schema(cfg)
    index = tantivy.Index(schema, path=str(tmp / "tantivy"))
    _register(index)
    writer = index.writer(heap_size=128_000_000, num_threads=1)
    columns = _ColumnBuilder(cfg)
    text_fields = {n: f.analyzer for n, f in cfg.fields.items() if f.type == "text"}
    terms = TermIndexBuilder(list(text_fields))
    ids: list[str] = []
    offsets = [0]
    vec_chunks: list[np.ndarray] = []
    embed_s = 0.0
    skipped = 0
    emb_fields = cfg.embedder.fields

    def flush(batch: list[tuple[int, dict]]) -> None:
        nonlocal embed_s
        texts = [" ".join(str(d[f]) for f in emb_fields if f in d) for _, d in batch]
        t = time.perf_counter()
        vec_chunks.append(embedder.encode(texts))
        embed_s += time.perf_counter() - t

    try:
        with open(tmp / "docs.jsonl", "wb") as docs_out:
            batch: list[tuple[int, dict]] = []
            for line_no, rec in records:
                fields = typed_fields(rec, line_no, cfg, source, skip_bad)
                if fields is None:
                    skipped += 1
                    continue
                row = len(ids)
                ids.append(rec["_id"])
                doc = tantivy.Document()
                doc.add_integer(ROW, row)
                for name, v in fields.items():
                    ftype = cfg.fields[name].type
                    for x in (v if isinstance(v, list) else [v]):
                        if ftype in ("text", "keyword"):
                            doc.add_text(name, x)
                        elif ftype == "integer":
                            doc.add_integer(name, x)
                        elif ftype == "float":
                            doc.add_float(name, x)
                        else:
                            doc.add_date(name, dt.datetime.fromtimestamp(to_epoch_seconds(x, name), dt.timezone.utc))
                writer.add_document(doc)
                columns.add(fields)
                terms.add({n: analyze(kind, fields.get(n, "")) for n, kind in text_fields.items()})
                blob = json.dumps({"_id": rec["_id"], **fields}, ensure_ascii=False).encode() + b"\n"
                docs_out.write(blob)
                offsets.append(offsets[-1] + len(blob))
                batch.append((line_no, fields))
                if len(batch) >= chunk:
                    flush(batch)
                    batch = []
                    if on_progress:
                        on_progress("index", len(ids) + skipped, total)
            if batch:
                flush(batch)
            if on_progress:
                on_progress("index", len(ids) + skipped, total)
        if not ids:
            raise CorpusError(source, 0, "no documents to index")
        writer.commit()
        writer.wait_merging_threads()
        vectors = np.concatenate(vec_chunks).astype(np.float32)
        np.save(tmp / "vectors.npy", vectors)
        np.save(tmp / "docs.offsets.npy", np.asarray(offsets, dtype=np.int64))
        columns.save(tmp)
        terms.save(tmp)
        knn_cfgs = [r for r in cfg.retrievers.values() if isinstance(r, KnnConfig)]
        exact_max = min((r.exact_max_docs for r in knn_cfgs), default=50_000)
        ann = None
        if len(ids) > exact_max:
            import faiss

            if on_progress:
                on_progress("hnsw", 0, None)
            hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 80
            hnsw.add(vectors)
            faiss.write_index(hnsw, str(tmp / "hnsw.faiss"))
            ann = "hnsw"
        manifest = {
            "format": FORMAT_VERSION, "index": cfg.index, "docs": len(ids), "skipped": skipped,
            "fingerprint": cfg.index_fingerprint(), "embedder": embedder.name, "dim": embedder.dim,
            "embedder_max_length": embedder.max_length, "embedder_dtype": embedder.dtype, "ann": ann, "source": source,
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "fields": {n: f.type for n, f in cfg.fields.items()},
        }
        with open(tmp / "ids.json", "w", encoding="utf-8") as fh:
            json.dump(ids, fh)
        with open(tmp / "manifest.json", "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        try:  # stop tantivy's writer threads before deleting the folder they write into
            writer.rollback()
        except Exception:
            pass
        del writer, index
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildReport(len(ids), skipped, time.perf_counter() - t0, embed_s, final)


class _ColumnBuilder:
    """Filter columns: numbers and dates as float64 (NaN = missing), keywords as codes in CSR form."""

    def __init__(self, cfg: IndexConfig):
        self.num = {n: [] for n, f in cfg.fields.items() if f.type in ("integer", "float", "date")}
        self.types = {n: f.type for n, f in cfg.fields.items()}
        self.kw = {n: ([0], [], {}) for n, f in cfg.fields.items() if f.type == "keyword"}

    def add(self, fields: dict[str, Any]) -> None:
        for n, col in self.num.items():
            v = fields.get(n)
            col.append(np.nan if v is None else (to_epoch_seconds(v, n) if self.types[n] == "date" else float(v)))
        for n, (offs, codes, vocab) in self.kw.items():
            v = fields.get(n)
            for x in ([] if v is None else v if isinstance(v, list) else [v]):
                codes.append(vocab.setdefault(x, len(vocab)))
            offs.append(len(codes))

    def save(self, folder: Path) -> None:
        arrays = {f"num.{n}": np.asarray(v, dtype=np.float64) for n, v in self.num.items()}
        vocabs = {}
        for n, (offs, codes, vocab) in self.kw.items():
            arrays[f"kw.{n}.offsets"] = np.asarray(offs, dtype=np.int64)
            arrays[f"kw.{n}.codes"] = np.asarray(codes, dtype=np.int32)
            vocabs[n] = list(vocab)
        np.savez(folder / "columns.npz", **arrays)
        with open(folder / "columns.json", "w", encoding="utf-8") as fh:
            json.dump(vocabs, fh)


# ---------------------------------------------------------------- search

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
        _register(self.index)
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
        self._flat = None
        self._hnsw = None
        self._terms: dict[str, FieldTerms] | None = None

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
        found = self.fetch_rows(r for r in rows if r is not None)
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
        if self._flat is None:
            import faiss

            idx = faiss.IndexFlatIP(self.vectors.shape[1])
            idx.add(np.ascontiguousarray(self.vectors))
            self._flat = idx
        return self._flat

    def hnsw(self):
        if self._hnsw is None and (self.path / "hnsw.faiss").exists():
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


def index_exists(cfg: IndexConfig, settings: Settings) -> dict | None:
    """The manifest of a built index whose stored parts match ``cfg``, or None."""
    m = Path(settings.index_dir) / cfg.index / "manifest.json"
    if not m.is_file():
        return None
    manifest = json.loads(m.read_text())
    if manifest.get("format") != FORMAT_VERSION or manifest.get("fingerprint") != cfg.index_fingerprint():
        return None
    return manifest
