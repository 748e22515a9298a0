"""Building an embedded index: tantivy documents, embeddings, columns, the forward index, written atomically.

The index is built in a temporary folder beside its final place and renamed
at the end, so a failed build leaves nothing behind; ``EmbeddedBackend``
(:mod:`connectors.embedded`) opens what this writes.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import tantivy

from cascade.config import IndexConfig, KnnConfig
from cascade.datasets import LoadStats
from cascade.errors import CorpusError
from cascade.query import to_epoch_seconds
from cascade.settings import Settings
from connectors.analysis import ANALYZERS, analyze, analyzer
from connectors.records import typed_fields
from cascade.models.embedder import load_embedder
from connectors.termindex import TermIndexBuilder

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


def register_analyzers(index: tantivy.Index) -> None:
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
    stats: LoadStats | None = None,
    on_progress: Callable[[str, int, int | None], None] | None = None,
    chunk: int = 512,
) -> BuildReport:
    """Ingest ``records`` (line number, record) into a fresh index folder, replacing any previous one.

    ``stats`` is the one count of bad lines: pass the one ``iter_corpus`` fills, so lines it skipped
    and lines whose fields are bad are reported (and recorded in the manifest) as one number.

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
    register_analyzers(index)
    writer = index.writer(heap_size=128_000_000, num_threads=1)
    columns = _ColumnBuilder(cfg)
    text_fields = {n: f.analyzer for n, f in cfg.fields.items() if f.type == "text"}
    terms = TermIndexBuilder(list(text_fields))
    ids: list[str] = []
    offsets = [0]
    vec_chunks: list[np.ndarray] = []
    embed_s = 0.0
    stats = stats if stats is not None else LoadStats()
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
                fields = typed_fields(rec, line_no, cfg, source, stats, skip_bad)
                if fields is None:
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
                        on_progress("index", len(ids) + stats.skipped, total)
            if batch:
                flush(batch)
            if on_progress:
                on_progress("index", len(ids) + stats.skipped, total)
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
            "format": FORMAT_VERSION, "index": cfg.index, "docs": len(ids), "skipped": stats.skipped,
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
    return BuildReport(len(ids), stats.skipped, time.perf_counter() - t0, embed_s, final)


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


def index_exists(cfg: IndexConfig, settings: Settings) -> dict | None:
    """The manifest of a built index whose stored parts match ``cfg``, or None."""
    m = Path(settings.index_dir) / cfg.index / "manifest.json"
    if not m.is_file():
        return None
    manifest = json.loads(m.read_text())
    if manifest.get("format") != FORMAT_VERSION or manifest.get("fingerprint") != cfg.index_fingerprint():
        return None
    return manifest
