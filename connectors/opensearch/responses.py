"""Reading OpenSearch answers: hits with their stored fields, error reasons, bulk item failures, statistics.

Pure functions over decoded JSON, tested against recorded and documented
OpenSearch responses in tests/fixtures/opensearch/responses/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cascade.candidates import Hit
from cascade.config import IndexConfig, OpenSearchBackendConfig
from connectors.records import lookup


def source_to_fields(source: dict[str, Any] | None, cfg: IndexConfig, backend: OpenSearchBackendConfig) -> dict[str, Any]:
    """``_source`` under cascade's field names; fields the document lacks are left out, as the embedded store does."""
    out: dict[str, Any] = {}
    for name in cfg.fields:
        v = lookup(source or {}, backend.field(name))
        if v is not None and v != "" and v != []:
            out[name] = v
    return out


def parse_hits(response: dict[str, Any], cfg: IndexConfig, backend: OpenSearchBackendConfig) -> list[Hit]:
    hits = (response.get("hits") or {}).get("hits") or []
    return [Hit(str(h["_id"]), float(h.get("_score") or 0.0), source_to_fields(h.get("_source"), cfg, backend))
            for h in hits]


def as_json(body: Any) -> Any:
    """Error bodies arrive decoded, or as raw text when the server did not label them application/json."""
    if isinstance(body, (str, bytes)):
        try:
            return json.loads(body)
        except ValueError:
            return body.decode(errors="replace") if isinstance(body, bytes) else body
    return body


def error_reason(body: Any) -> str:
    """The most specific reason OpenSearch gave: the root cause, then the cause, then the top reason.

    ``search_phase_execution_exception`` says only "all shards failed"; what a
    person needs (the field, the bad value) is in the root cause or a shard failure.
    """
    body = as_json(body)
    if isinstance(body, str):
        return body
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, str):
        return err
    if not isinstance(err, dict):
        return str(body)
    candidates: list[dict[str, Any]] = list(err.get("root_cause") or [])
    for fs in err.get("failed_shards") or []:
        if isinstance(fs.get("reason"), dict):
            candidates.append(fs["reason"])
    candidates.append(err)
    if isinstance(err.get("caused_by"), dict):
        candidates.append(err["caused_by"])
    for c in candidates:
        reason = c.get("reason")
        if reason and reason != "all shards failed":
            typ = c.get("type")
            # The root cause is listed without its own cause; a shard failure with the same reason has it.
            deeper = next((x.get("caused_by") for x in candidates if x.get("reason") == reason and x.get("caused_by")), {})
            extra = f" ({deeper.get('reason')})" if isinstance(deeper, dict) and deeper.get("reason") and deeper.get("reason") not in reason else ""
            return f"{typ}: {reason}{extra}" if typ else f"{reason}{extra}"
    return str(err.get("type") or err)


def error_type(body: Any) -> str | None:
    body = as_json(body)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        roots = err.get("root_cause") or []
        return err.get("type") or (roots[0].get("type") if roots else None)
    return None


def missing_index(body: Any) -> str | None:
    """The index an ``index_not_found_exception`` names, or None for any other error."""
    body = as_json(body)
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None
    for e in [err, *(err.get("root_cause") or [])]:
        if e.get("type") == "index_not_found_exception":
            return e.get("index") or e.get("resource.id") or "?"
    return None


@dataclass(frozen=True)
class BulkFailure:
    id: str
    status: int
    type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.id}: {self.status} {self.type}: {self.reason}"


def bulk_failures(response: dict[str, Any]) -> list[BulkFailure]:
    """Items that failed, in request order; ``errors: false`` short-cuts the scan as OpenSearch intends."""
    if not response.get("errors"):
        return []
    out = []
    for item in response.get("items") or []:
        (_, r), = item.items()  # {"index": {...}} / {"create": {...}} / {"update": {...}} / {"delete": {...}}
        err = r.get("error")
        if err is None:
            continue
        if isinstance(err, dict):
            typ, reason = str(err.get("type", "error")), error_reason({"error": err}).split(": ", 1)[-1]
        else:
            typ, reason = "error", str(err)
        out.append(BulkFailure(str(r.get("_id")), int(r.get("status", 0)), typ, reason))
    return out


@dataclass(frozen=True)
class FieldStats:
    """Corpus statistics of one field, for BM25-style features: df per (analyzed) term, length, doc count."""

    field: str
    doc_count: int  # documents that have this field
    sum_ttf: int  # total tokens in the field over all documents
    doc_freq: dict[str, int]  # analyzed term -> documents containing it
    total_docs: int | None = None  # documents in the index (from _stats), when known

    @property
    def avg_length(self) -> float:
        return self.sum_ttf / self.doc_count if self.doc_count else 0.0


def parse_termvectors(response: dict[str, Any], field: str) -> FieldStats:
    tv = (response.get("term_vectors") or {}).get(field) or {}
    fs = tv.get("field_statistics") or {}
    terms = tv.get("terms") or {}
    return FieldStats(field, int(fs.get("doc_count", 0)), int(fs.get("sum_ttf", 0)),
                      {t: int(v.get("doc_freq", 0)) for t, v in terms.items()})


def parse_doc_count(stats_response: dict[str, Any]) -> int:
    return int(stats_response["_all"]["primaries"]["docs"]["count"])


__all__ = ["BulkFailure", "FieldStats", "bulk_failures", "error_reason", "error_type", "missing_index",
           "parse_doc_count", "parse_hits", "parse_termvectors", "source_to_fields"]
