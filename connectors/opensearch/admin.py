"""Creating an OpenSearch index from a cascade config and bulk-loading a BEIR corpus into it.

For new users who have a cluster but no index: the mapping comes from the
config (see ``mapping.index_body``), documents are embedded here in batches,
and every document the cluster refuses is reported by id with its reason
instead of being lost in a bulk response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from cascade.config import IndexConfig, OpenSearchBackendConfig
from cascade.datasets import LoadStats
from cascade.errors import ConfigError
from cascade.query import to_epoch_seconds
from cascade.settings import Settings
from connectors.records import typed_fields
from connectors.opensearch.client import Cluster
from connectors.opensearch.mapping import index_body, uses_vectors
from connectors.opensearch.queries import iso_date
from connectors.opensearch.responses import BulkFailure, bulk_failures

log = logging.getLogger(__name__)


def _put(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """``meta.journal`` is stored as ``{"meta": {"journal": ...}}``, the object the mapping describes."""
    parts = dotted.split(".")
    for p in parts[:-1]:
        doc = doc.setdefault(p, {})
    doc[parts[-1]] = value


@dataclass
class LoadReport:
    index: str
    docs: int = 0  # documents the cluster accepted
    skipped: int = 0  # corpus records that were not valid (with skip_bad)
    failed: list[BulkFailure] = field(default_factory=list)  # documents the cluster refused
    seconds: float = 0.0
    embed_seconds: float = 0.0
    existed: bool = False  # the index was there already and was left alone
    count: int | None = None  # documents in the index after the load


def to_document(fields: dict[str, Any], cfg: IndexConfig, b: OpenSearchBackendConfig) -> dict[str, Any]:
    """A record's typed fields under the index's field names.

    Date strings go as written; a numeric date becomes an ISO string, because
    cascade reads a bare number as epoch seconds and OpenSearch as milliseconds.
    """
    doc: dict[str, Any] = {}
    for name, v in fields.items():
        if cfg.fields[name].type == "date" and not isinstance(v, str):
            v = iso_date(to_epoch_seconds(v, name))
        _put(doc, b.field(name), v)
    return doc


async def create_index(cluster: Cluster, index: str, body: dict[str, Any], rebuild: bool) -> bool:
    """Create ``index`` (deleting it first with ``rebuild``); False when it exists and is kept."""
    exists = await cluster.call(f"HEAD {index}", lambda c: c.indices.exists(index=index))
    if exists and not rebuild:
        return False
    if exists:
        await cluster.call(f"DELETE {index}", lambda c: c.indices.delete(index=index))
    await cluster.call(f"creating index {index!r}", lambda c: c.indices.create(index=index, body=body))
    return True


async def send_bulk(cluster: Cluster, index: str, docs: list[tuple[str, dict[str, Any]]]) -> list[BulkFailure]:
    """Index ``docs``; items refused with 429 (a full write queue) are sent again with backoff, the others reported."""
    b = cluster.b
    pending, final = docs, []
    for attempt in range(b.max_retries + 1):
        lines: list[dict[str, Any]] = []
        for doc_id, doc in pending:
            lines += [{"index": {"_index": index, "_id": doc_id}}, doc]
        resp = await cluster.call(f"_bulk into {index!r}", lambda c: c.bulk(body=lines))
        failures = bulk_failures(resp)
        last = attempt == b.max_retries
        final += [f for f in failures if f.status != 429 or last]
        busy = {f.id for f in failures if f.status == 429}
        if not busy or last:
            break
        pending = [(i, d) for i, d in pending if i in busy]
        delay = b.retry_backoff_s * (2 ** attempt)
        log.warning("%d documents refused with 429; sending them again in %.2f s", len(pending), delay)
        await asyncio.sleep(delay)
    return final


async def load_records(
    cluster: Cluster,
    cfg: IndexConfig,
    index: str,
    records: Iterable[tuple[int, dict]],
    embed: Callable[[list[str]], Any] | None,
    *,
    source: str,
    report: LoadReport,
    skip_bad: bool = False,
    stats: LoadStats | None = None,
    batch_size: int = 256,
    on_progress: Callable[[int], None] | None = None,
) -> LoadReport:
    """Send ``records`` (line number, record) in batches: extract fields, embed, bulk, collect refusals."""
    b = cfg.backend
    assert isinstance(b, OpenSearchBackendConfig)
    emb_fields = cfg.embedder.fields
    batch: list[tuple[str, dict[str, Any]]] = []

    async def flush() -> None:
        if embed is not None:
            texts = [" ".join(str(f[n]) for n in emb_fields if n in f) for _, f in batch]
            t = time.perf_counter()
            vecs = await asyncio.to_thread(embed, texts)
            report.embed_seconds += time.perf_counter() - t
        docs = []
        for i, (doc_id, fields) in enumerate(batch):
            doc = to_document(fields, cfg, b)
            if embed is not None:
                _put(doc, b.knn_field, [float(x) for x in vecs[i]])
            docs.append((doc_id, doc))
        failed = await send_bulk(cluster, index, docs)
        report.failed += failed
        report.docs += len(docs) - len(failed)
        if on_progress:
            on_progress(report.docs + len(report.failed) + report.skipped)
        batch.clear()

    stats = stats if stats is not None else LoadStats()
    for line_no, rec in records:
        fields = typed_fields(rec, line_no, cfg, source, stats, skip_bad)
        report.skipped = stats.skipped
        if fields is None:
            continue
        batch.append((rec["_id"], fields))
        if len(batch) >= batch_size:
            await flush()
    if batch:
        await flush()
    await cluster.call(f"refreshing {index!r}", lambda c: c.indices.refresh(index=index))
    resp = await cluster.call(f"_count on {index!r}", lambda c: c.count(index=index))
    report.count = int(resp.get("count", 0))
    return report


async def load_corpus(
    cfg: IndexConfig,
    records: Iterable[tuple[int, dict]],
    settings: Settings,
    *,
    source: str,
    rebuild: bool = False,
    skip_bad: bool = False,
    stats: LoadStats | None = None,
    batch_size: int = 256,
    on_progress: Callable[[int], None] | None = None,
    cluster: Cluster | None = None,
) -> LoadReport:
    """Create the config's index in its cluster (unless it exists and ``rebuild`` is off) and load ``records``."""
    b = cfg.backend
    if not isinstance(b, OpenSearchBackendConfig):
        raise ConfigError(f"{cfg.index}.yaml", "backend.type", "loading into OpenSearch needs backend.type: opensearch")
    if b.mode == "neural" and uses_vectors(cfg):
        raise ConfigError(f"{cfg.index}.yaml", "backend.mode",
                          "with mode: neural the cluster embeds documents through its own ingest pipeline; create that "
                          "index in OpenSearch (a text_embedding processor) and load it there")
    t0 = time.perf_counter()
    cluster = cluster or Cluster(b, f"{cfg.index}.yaml")
    index = b.index_name(cfg.index)
    report = LoadReport(index)
    embed = None
    dim = None
    if uses_vectors(cfg):
        from cascade.models.embedder import load_embedder

        e = cfg.embedder
        embedder = await asyncio.to_thread(load_embedder, e.model, settings, e.max_length, e.batch_size, e.dtype)
        embed, dim = embedder.encode, embedder.dim
    if not await create_index(cluster, index, index_body(cfg, b, dim), rebuild):
        resp = await cluster.call(f"_count on {index!r}", lambda c: c.count(index=index))
        report.existed, report.count = True, int(resp.get("count", 0))
        return report
    await load_records(cluster, cfg, index, records, embed, source=source, report=report, skip_bad=skip_bad,
                       stats=stats, batch_size=batch_size, on_progress=on_progress)
    report.seconds = time.perf_counter() - t0
    return report
