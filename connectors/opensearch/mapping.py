"""The index a cascade config needs, and the check that an existing index is that index.

Both are pure: ``index_body`` is what ``cascade index --backend opensearch``
sends, ``mapping_problems`` is what start-up runs against ``GET INDEX/_mapping``,
so a cluster built by hand or by another tool is accepted when it fits.
"""

from __future__ import annotations

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
