"""The event stream as OpenSearch User Behavior Insights indexes: ``ubi_queries`` and ``ubi_events``.

Every logged search becomes a ``ubi_queries`` document (``query_id``,
``client_id``, ``user_query``, ``query_response_hit_ids``, ``timestamp``,
``application``, and cascade's own facts in ``query_attributes``: index,
profile, experiment and arm), and every posted event a ``ubi_events`` one (as
it was sent, with ``user_query`` copied from its search, which the Search
Relevance Workbench's click models group by). Files are ``_bulk`` bodies whose
``_id`` is the query id or event id, so loading an export twice changes
nothing. The mappings are UBI's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

QUERIES, EVENTS = "ubi_queries", "ubi_events"

MAPPINGS: dict[str, dict[str, Any]] = {
    QUERIES: {"properties": {
        "timestamp": {"type": "date", "format": "strict_date_time"},
        "query_id": {"type": "keyword", "ignore_above": 100},
        "query": {"type": "text"},
        "query_response_id": {"type": "keyword", "ignore_above": 100},
        "query_response_hit_ids": {"type": "keyword"},
        "user_query": {"type": "keyword"},
        "query_attributes": {"type": "object", "dynamic": True},
        "client_id": {"type": "keyword", "ignore_above": 100},
        "application": {"type": "keyword", "ignore_above": 100},
    }},
    EVENTS: {"properties": {
        "application": {"type": "keyword", "ignore_above": 256},
        "action_name": {"type": "keyword", "ignore_above": 100},
        "client_id": {"type": "keyword", "ignore_above": 100},
        "query_id": {"type": "keyword", "ignore_above": 100},
        "message": {"type": "keyword", "ignore_above": 1024},
        "message_type": {"type": "keyword", "ignore_above": 100},
        "user_query": {"type": "keyword"},
        "timestamp": {"type": "date", "format": "strict_date_time", "ignore_malformed": True},
        "event_attributes": {"dynamic": True, "properties": {
            "position": {"properties": {"ordinal": {"type": "integer"}, "x": {"type": "integer"},
                                        "y": {"type": "integer"}, "page_depth": {"type": "integer"}}},
            "object": {"properties": {"object_id": {"type": "keyword", "ignore_above": 256},
                                      "object_id_field": {"type": "keyword", "ignore_above": 100},
                                      "description": {"type": "text"}}},
            "session_id": {"type": "keyword", "ignore_above": 256},
        }},
    }},
}


def query_doc(rec: dict[str, Any]) -> dict[str, Any]:
    exp = rec.get("experiment") or {}
    attrs = {k: v for k, v in {"index": rec.get("index"), "profile": rec.get("profile"),
                               "experiment": exp.get("id"), "arm": exp.get("arm"), "mode": exp.get("mode"),
                               "session_id": rec.get("session_id"), "user_id": rec.get("user_id"),
                               "request_id": rec.get("request_id"), "degraded": rec.get("degraded"),
                               "offset": rec.get("offset") or None, "randomized": rec.get("randomized"),
                               "user_attributes": rec.get("user_attributes")}.items()
             if v is not None}
    if rec.get("teams") is not None:
        attrs["teams"] = [exp.get("arms", [])[t] if 0 <= t < len(exp.get("arms", [])) else None for t in rec["teams"]]
    return {"timestamp": rec.get("timestamp"), "query_id": rec["query_id"], "client_id": rec.get("client_id"),
            "user_query": rec.get("user_query"), "query": rec.get("user_query"),
            "query_response_id": rec["query_id"], "query_response_hit_ids": rec.get("hits") or [],
            "application": rec.get("application", "cascade"), "query_attributes": attrs}


def event_doc(rec: dict[str, Any], user_query: str | None) -> dict[str, Any]:
    doc = {k: v for k, v in rec.items() if k != "event_id"}
    doc.setdefault("application", "cascade")
    if user_query is not None:
        doc["user_query"] = user_query
    return doc


async def export(url: str, out: Path, *, index: str | None = None,
                 on_progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write ``ubi_queries.ndjson``, ``ubi_events.ndjson`` (``_bulk`` bodies) and ``*.mapping.json`` to ``out``."""
    from connectors.events import connect, iterate

    out.mkdir(parents=True, exist_ok=True)
    for name, mapping in MAPPINGS.items():
        (out / f"{name}.mapping.json").write_text(json.dumps({"mappings": mapping}, indent=2))
    users: dict[str, str | None] = {}
    counts = {"queries": 0, "events": 0, "skipped": 0}
    client = connect(url)
    try:
        with open(out / f"{QUERIES}.ndjson", "w", encoding="utf-8") as fq, \
                open(out / f"{EVENTS}.ndjson", "w", encoding="utf-8") as fe:
            n = 0
            async for _, kind, rec in iterate(client):
                n += 1
                if kind == "q":
                    if index is not None and rec.get("index") != index:
                        counts["skipped"] += 1
                        continue
                    users[rec["query_id"]] = rec.get("user_query")
                    fq.write(json.dumps({"index": {"_index": QUERIES, "_id": rec["query_id"]}}) + "\n")
                    fq.write(json.dumps(query_doc(rec), ensure_ascii=False) + "\n")
                    counts["queries"] += 1
                else:
                    if index is not None and rec.get("query_id") not in users:
                        counts["skipped"] += 1
                        continue
                    fe.write(json.dumps({"index": {"_index": EVENTS, "_id": rec["event_id"]}}) + "\n")
                    fe.write(json.dumps(event_doc(rec, users.get(rec.get("query_id"))), ensure_ascii=False) + "\n")
                    counts["events"] += 1
                if on_progress and n % 1000 == 0:
                    on_progress(n)
    finally:
        await client.aclose()
    return counts


async def load_into_opensearch(out: Path, host: str, *, username: str | None = None, password: str | None = None,
                               verify_certs: bool = True) -> dict[str, int]:
    """Create the two UBI indexes (if missing) and bulk-load an export into them."""
    from connectors.opensearch.ubi import load

    return await load(out, host, MAPPINGS, username=username, password=password, verify_certs=verify_certs)
