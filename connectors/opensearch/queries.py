"""Request bodies for OpenSearch, built as plain dicts from a cascade config and a query.

Kept free of I/O so every query shape can be compared with a golden file
(tests/fixtures/opensearch/requests/) and read by a person before it is sent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

from cascade.config import IndexConfig, OpenSearchBackendConfig
from cascade.query import Filter, Query, RangeFilter, RANGE_OPS


def iso_date(epoch_seconds: float) -> str:
    """Cascade keeps dates as epoch seconds; OpenSearch's default date format parses ISO 8601, not seconds."""
    d = dt.datetime.fromtimestamp(epoch_seconds, dt.timezone.utc)
    text = d.isoformat(timespec="milliseconds" if d.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _value(f: Filter, v: Any) -> Any:
    return iso_date(v) if f.type == "date" else v


def filter_clauses(filters: Sequence[Filter], backend: OpenSearchBackendConfig) -> list[dict[str, Any]]:
    """Typed cascade filters as ``bool.filter`` clauses: term/terms for exact values, range for bounds."""
    out: list[dict[str, Any]] = []
    for f in filters:
        name = backend.field(f.field)
        if isinstance(f, RangeFilter):
            bounds = {op: _value(f, getattr(f, op)) for op in RANGE_OPS if getattr(f, op) is not None}
            out.append({"range": {name: bounds}})
        elif len(f.values) == 1:
            out.append({"term": {name: _value(f, f.values[0])}})
        else:
            out.append({"terms": {name: [_value(f, v) for v in f.values]}})
    return out


def source_fields(cfg: IndexConfig, backend: OpenSearchBackendConfig) -> list[str]:
    """The stored fields stages and responses use; never the vector, which would dwarf everything else."""
    return [backend.field(n) for n in cfg.fields]


def lexical_query(query: Query, boosts: dict[str, float], backend: OpenSearchBackendConfig) -> dict[str, Any]:
    fields = [backend.field(f) if b == 1.0 else f"{backend.field(f)}^{b:g}" for f, b in boosts.items()]
    match = {"multi_match": {"query": query.text, "fields": fields, "type": backend.multi_match_type}}
    flt = filter_clauses(query.parsed_filters, backend)
    return {"bool": {"must": [match], "filter": flt}} if flt else match


def vector_query(query: Query, k: int, backend: OpenSearchBackendConfig, vector: Sequence[float] | None) -> dict[str, Any]:
    """``knn`` with a local query vector, or ``neural`` where the cluster's model embeds the text.

    Filters go inside the vector query so the engine filters while it searches
    (efficient filtering) instead of cutting the k nearest afterwards.
    """
    flt = filter_clauses(query.parsed_filters, backend)
    if backend.mode == "neural":
        inner: dict[str, Any] = {"query_text": query.text, "model_id": backend.model_id, "k": k}
        kind = "neural"
    else:
        if vector is None:
            raise ValueError("a knn query needs the query vector")
        inner = {"vector": [float(x) for x in vector], "k": k}
        kind = "knn"
    if flt:
        inner["filter"] = flt[0] if len(flt) == 1 else {"bool": {"filter": flt}}
    return {kind: {backend.knn_field: inner}}


def search_body(q: dict[str, Any], size: int, sources: list[str]) -> dict[str, Any]:
    return {"size": size, "_source": {"includes": sources}, "query": q}


def hybrid_body(parts: list[dict[str, Any]], size: int, sources: list[str]) -> dict[str, Any]:
    """One ``hybrid`` query; the search pipeline named in the config normalizes and combines the parts."""
    return {"size": size, "_source": {"includes": sources}, "query": {"hybrid": {"queries": parts}}}


def msearch_lines(index: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The header/body pairs of one ``_msearch`` (opensearch-py turns the list into NDJSON)."""
    lines: list[dict[str, Any]] = []
    for b in bodies:
        lines += [{"index": index}, b]
    return lines


def termvectors_body(field: str, terms: Sequence[str]) -> dict[str, Any]:
    """An artificial document holding the terms: OpenSearch analyzes it and reports each term's statistics."""
    return {"doc": {field: " ".join(terms)}, "fields": [field], "term_statistics": True,
            "field_statistics": True, "positions": False, "offsets": False, "payloads": False}
