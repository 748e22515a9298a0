"""The index a cascade config needs, and the check that an existing index is that index.

Both are pure: ``index_body`` is what ``cascade index --backend opensearch``
sends, ``mapping_problems`` is what start-up runs against ``GET INDEX/_mapping``,
so a cluster built by hand or by another tool is accepted when it fits.
"""

from __future__ import annotations

import re
from typing import Any

from cascade.config import IndexConfig, KnnConfig, OpenSearchBackendConfig

TYPES = {"keyword": "keyword", "integer": "long", "float": "double", "date": "date"}
COMPATIBLE = {  # cascade type -> index field types that answer its queries and filters the same way
    "text": {"text", "match_only_text"},
    "keyword": {"keyword", "constant_keyword", "wildcard"},
    "integer": {"long", "integer", "short", "byte", "unsigned_long"},
    "float": {"double", "float", "half_float", "scaled_float", "long", "integer"},
    "date": {"date", "date_nanos"},
}


def _set(props: dict[str, Any], dotted: str, value: dict[str, Any]) -> None:
    """``metadata.year`` becomes an object field ``metadata`` holding ``year``, as OpenSearch maps dotted names."""
    parts = dotted.split(".")
    for p in parts[:-1]:
        props = props.setdefault(p, {"properties": {}})["properties"]
    props[parts[-1]] = value


def lookup(props: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    parts = dotted.split(".")
    cur: dict[str, Any] | None = {"properties": props}
    for p in parts:
        if cur is None:
            return None
        cur = (cur.get("properties") or {}).get(p)
    return cur


def uses_vectors(cfg: IndexConfig) -> bool:
    return any(isinstance(r, KnnConfig) for r in cfg.retrievers.values())


def index_body(cfg: IndexConfig, backend: OpenSearchBackendConfig, dim: int | None) -> dict[str, Any]:
    """Settings and mappings: analyzed text, exact keywords, numbers, dates and one cosine knn_vector."""
    props: dict[str, Any] = {}
    for name, f in cfg.fields.items():
        if f.type == "text":
            spec = {"type": "text", "analyzer": "english" if f.analyzer == "english" else "standard"}
        else:
            spec = {"type": TYPES[f.type]}
        _set(props, backend.field(name), spec)
    settings: dict[str, Any] = {}
    if backend.shards is not None:
        settings["number_of_shards"] = backend.shards
    if backend.replicas is not None:
        settings["number_of_replicas"] = backend.replicas
    if uses_vectors(cfg):
        if dim is None:
            raise ValueError("a knn_vector field needs the embedder's dimension")
        settings["knn"] = True
        _set(props, backend.knn_field, {
            "type": "knn_vector", "dimension": dim,
            "method": {"name": "hnsw", "space_type": "cosinesimil", "engine": backend.engine},
        })
    return {"settings": {"index": settings}, "mappings": {"properties": props}}


def mapping_problems(mapping_response: dict[str, Any], cfg: IndexConfig, backend: OpenSearchBackendConfig,
                     dim: int | None) -> tuple[list[str], str | None]:
    """(fields the index lacks or maps with an unusable type, a vector-dimension mismatch or None).

    ``GET alias/_mapping`` answers per concrete index; every index behind the
    name must fit, so the problems of all of them are collected.
    """
    missing: list[str] = []
    dim_problem = None
    for concrete, body in mapping_response.items():
        props = (body.get("mappings") or {}).get("properties") or {}
        where = "" if len(mapping_response) == 1 else f" in {concrete}"
        for name, f in cfg.fields.items():
            target = backend.field(name)
            got = lookup(props, target)
            label = name if target == name else f"{name} (index field {target})"
            if got is None:
                missing.append(f"{label}{where}")
            elif got.get("type", "object") not in COMPATIBLE[f.type]:
                missing.append(f"{label}{where}: mapped as {got.get('type', 'object')}, cascade needs {f.type}")
        if uses_vectors(cfg):
            vec = lookup(props, backend.knn_field)
            if vec is None or vec.get("type") != "knn_vector":
                found = "missing" if vec is None else f"mapped as {vec.get('type', 'object')}"
                missing.append(f"{backend.knn_field} (the knn_vector field){where}: {found}")
            elif dim is not None and int(vec.get("dimension", -1)) != dim:
                dim_problem = (f"the index's {backend.knn_field} holds {vec.get('dimension')}-d vectors{where} "
                               f"but the embedder gives {dim}-d ones")
    return missing, dim_problem


DISCOVERED = {t: kind for kind, types in COMPATIBLE.items() for t in types if kind != "float" or t not in
              ("long", "integer")}
_NAME = re.compile(r"[^a-z0-9_]+")


def _leaves(props: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every mapped field as (dotted path, spec); object fields are walked, multi-field sub-fields are not."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name, spec in props.items():
        path = f"{prefix}{name}"
        if "properties" in spec and spec.get("type", "object") in ("object", "nested"):
            out += _leaves(spec["properties"], path + ".")
        else:
            out.append((path, spec))
    return out


def config_from_mapping(mapping_response: dict[str, Any], name: str, backend: dict[str, Any],
                        dim: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """A cascade config (as data) for an index that exists, from ``GET INDEX/_mapping``; and what was left out.

    Text fields become BM25 fields (english analyzer kept, any other as
    standard), keyword, number and date fields become filterable fields, and a
    ``knn_vector`` of the embedder's dimension becomes a kNN retriever. A field
    whose path is not a plain name is given one (``metadata.year`` becomes
    ``metadata_year``) and mapped back through ``backend.field_map``.
    """
    body = next(iter(mapping_response.values()), {}) if mapping_response else {}
    props = (body.get("mappings") or {}).get("properties") or {}
    fields: dict[str, dict[str, Any]] = {}
    field_map: dict[str, str] = {}
    skipped: list[str] = []
    vectors: list[tuple[str, int]] = []
    for path, spec in _leaves(props):
        ftype = spec.get("type", "object")
        if ftype == "knn_vector":
            vectors.append((path, int(spec.get("dimension", -1))))
            continue
        kind = DISCOVERED.get(ftype)
        if kind is None:
            skipped.append(f"{path} ({ftype}: no cascade field type)")
            continue
        cname = _NAME.sub("_", path.lower()).strip("_") or "field"
        while cname in fields:
            cname += "_"
        entry: dict[str, Any] = {"type": kind}
        if kind == "text":
            entry["analyzer"] = "english" if spec.get("analyzer") == "english" else "standard"
        fields[cname] = entry
        if cname != path:
            field_map[cname] = path
    text = [n for n, f in fields.items() if f["type"] == "text"]
    if not text:
        raise ValueError("the index maps no text field: cascade needs at least one for BM25")
    b = {"type": "opensearch", **backend, **({"field_map": field_map} if field_map else {})}
    retrievers: dict[str, Any] = {"bm25": {"type": "bm25", "k": 100}}
    usable = [(p, d) for p, d in vectors if dim is None or d == dim]
    for p, d in vectors:
        if (p, d) not in usable:
            skipped.append(f"{p} (knn_vector of {d} dimensions; the embedder gives {dim})")
    if usable:
        b["knn_field"] = usable[0][0]
        retrievers["knn"] = {"type": "knn", "k": 100}
        skipped += [f"{p} (a second knn_vector; cascade uses one)" for p, _ in usable[1:]]
    cfg = {
        "index": name,
        "description": f"Discovered from the mapping of {backend.get('index') or name}; review and bump version.",
        "backend": b,
        "fields": fields,
        "embedder": {"model": "default", "fields": text[:2]},
        "retrievers": retrievers,
        "fusion": {"method": "rrf", "k": 60, "keep": 100},
        "features": {"version": 1, "semantic": bool(usable)},
    }
    return cfg, skipped
