"""Feature logs: candidates and their features for judged queries, written once to Parquet.

Training then never re-queries the engine, and a log records exactly what the
live cascade computed (same code path: ``Cascade.candidates``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cascade.controller import Cascade
from cascade.errors import CascadeError, DatasetError
from cascade.query import Query


async def log_features(
    cascade: Cascade,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    out: Path,
    *,
    source: str,
    limit: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write one row per (judged query, candidate): query id, doc id, label (0 if unjudged), features."""
    if cascade.features is None:
        raise CascadeError(f"index {cascade.config.index!r} declares no `features:`; add a feature set to its config")
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        raise DatasetError(f"{len(unknown)} judged query ids are not in queries.jsonl, e.g. {unknown[:5]}; "
                           f"the judgments do not belong to these queries")
    qids = list(qrels)[:limit] if limit else list(qrels)
    names = cascade.features.names
    cols: dict[str, list] = {"qid": [], "doc_id": [], "label": [], "fusion_rank": []}
    blocks: list[np.ndarray] = []
    empty = 0
    for n, qid in enumerate(qids, start=1):
        q = cascade.validate(Query(text=queries[qid], size=1, id=qid))
        cands, traces = await cascade.candidates(q, features=True)  # what the LTR stage will see
        failed = [t.name for t in traces if t.error]
        if failed:
            raise CascadeError(f"query {qid}: {', '.join(failed)} failed while logging features: "
                               f"{[t.error for t in traces if t.error][0]}")
        if not len(cands):
            empty += 1
        judged = qrels[qid]
        cols["qid"] += [qid] * len(cands)
        cols["doc_id"] += list(cands.ids)
        cols["label"] += [int(judged.get(d, 0)) for d in cands.ids]
        cols["fusion_rank"] += list(range(1, len(cands) + 1))
        blocks.append(cands.features if cands.features is not None else np.zeros((0, len(names)), np.float32))
        if on_progress:
            on_progress(n, len(qids))
    x = np.vstack(blocks) if blocks else np.zeros((0, len(names)), np.float32)
    write_log(out, cols, x, log_meta(cascade.config.index, source, cascade.features))
    return {"queries": len(qids), "rows": len(x), "empty_queries": empty, "positives": int(sum(l > 0 for l in cols["label"]))}


def log_meta(index: str, source: str, features: Any, names: list[str] | None = None) -> dict[str, Any]:
    """What a feature log records about its feature set (``names``: when they differ from the extractor's)."""
    return {"index": index, "source": source, "feature_names": names or features.names,
            "feature_version": features.version, "feature_fingerprint": features.fingerprint,
            "keyword_source": features.keyword_source, "keyword_analyzers": features.keyword_analyzers}


def write_log(out: Path, cols: dict[str, list], x: np.ndarray, meta: dict[str, Any]) -> None:
    """A feature log: ``cols`` (qid, doc_id, label, fusion_rank), one column per feature, and ``meta``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = meta["feature_names"]
    table = pa.table({**{k: pa.array(v) for k, v in cols.items()},
                      **{name: pa.array(x[:, j]) for j, name in enumerate(names)}})
    table = table.replace_schema_metadata({b"cascade": json.dumps(meta).encode()})
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)


def read_log(paths: list[Path]) -> tuple[dict, "object"]:
    """Metadata and the concatenated table of one or more logs (all of the same feature set)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, meta = [], None
    for p in paths:
        try:
            t = pq.read_table(p)
        except Exception as exc:
            raise DatasetError(f"{p}: not a readable Parquet feature log ({exc})") from None
        raw = (t.schema.metadata or {}).get(b"cascade")
        if raw is None:
            raise DatasetError(f"{p}: not a cascade feature log (no cascade metadata); write one with `cascade features log`")
        m = json.loads(raw)
        if meta is not None and m["feature_names"] != meta["feature_names"]:
            raise DatasetError(f"{p}: its feature set differs from {paths[0]}; log them with the same config")
        if meta is not None and m.get("keyword_source") != meta.get("keyword_source"):
            raise DatasetError(f"{p}: its keyword features were computed by the {m.get('keyword_source')} backend, "
                               f"those of {paths[0]} by the {meta.get('keyword_source')} backend; train on one")
        meta = meta or m
        tables.append(t)
    return meta, pa.concat_tables(tables)


def file_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
