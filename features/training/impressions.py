"""Feature logs of logged searches, with behaviour features as they were when each search was served.

A model with popularity or personal features must be trained on the values
those features had at the impression, not on today's (today's counts include
the clicks the impression itself caused, and a user's later taste). So the log
has one group per logged search of the index (its ``query_id``): the
candidates and static features the cascade computes for its query text (they
depend on the index alone), and the behaviour features rebuilt by
:func:`features.personal.replay` from the event stream as it stood just
before the search. Labels come from judgments by query (``cascade train
labels`` or a dataset's qrels), from the search's own clicks, or from a
function (the simulator's per-user judgments).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping

import numpy as np

from cascade.errors import CascadeError
from cascade.query import Query
from cascade.text import normalize_query
from features.logging import log_meta, write_log
from features.personal import BehaviorGroup, DocValues, entities, epoch, keyword_values, replay

LabelFn = Callable[[dict[str, Any], list[str]], list[int]]


def static_config(cfg: Any) -> Any:
    """The profile config without its behaviour groups: candidates and static features (behaviour columns are
    appended after them, in the order the full feature set lists them)."""
    ft = cfg.features
    return cfg.model_copy(update={"features": ft.model_copy(update={"popularity": None, "personal": None}),
                                  "stages": []})


async def log_impressions(cascade: Any, group: BehaviorGroup, records: AsyncIterator[tuple[str, str, dict[str, Any]]],
                          values: DocValues, out: Path, *, features: Any, labels: LabelFn | None = None,
                          clicks: bool = False, every: int = 1, limit: int | None = None,
                          on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the log of every ``every``-th logged search (at most ``limit``); ``cascade`` computes static
    features, ``features`` is the full extractor whose names the log records. Labels: ``labels(record,
    doc_ids)``, else the search's clicks (``clicks``)."""
    if labels is None and not clicks:
        raise CascadeError("give judgments (--qrels) or --clicks to label the logged searches")
    static: dict[str, tuple[list[str], list[dict[str, Any]], np.ndarray]] = {}
    blocks: list[np.ndarray] = []
    cols: dict[str, list] = {"qid": [], "doc_id": [], "label": [], "fusion_rank": []}
    clicked: dict[str, set[str]] = {}
    where: dict[str, tuple[int, list[str]]] = {}  # query id -> (first row, doc ids)
    seen = [0, 0]
    pers_field = group.pers.field if group.pers else None

    async def on_search(rec: dict[str, Any], agg: Any) -> None:
        seen[0] += 1
        if (seen[0] - 1) % every or (limit is not None and seen[1] >= limit):
            return
        text = normalize_query(str(rec.get("user_query") or ""))
        if not text:
            return
        if text not in static:
            q = cascade.validate(Query(text=text, size=1))
            cands, traces = await cascade.candidates(q, features=True)
            failed = [t for t in traces if t.error]
            if failed:
                raise CascadeError(f"query {text[:60]!r}: {failed[0].name} failed: {failed[0].error}")
            kept = [{pers_field: keyword_values(f, pers_field)} if pers_field else {} for f in cands.fields]
            static[text] = (list(cands.ids), kept, cands.features)
        ids, kept, x = static[text]
        user, seg = entities(rec.get("user_id"), rec.get("user_attributes"), group.pers)
        snap = agg.snapshot(ids, user, seg, epoch(rec.get("timestamp")))
        blocks.append(np.hstack([x, group.from_snapshot(snap, kept)]).astype(np.float32))
        qid = str(rec["query_id"])
        where[qid] = (len(cols["qid"]), ids)
        cols["qid"] += [qid] * len(ids)
        cols["doc_id"] += ids
        cols["label"] += labels(rec, ids) if labels is not None else [0] * len(ids)
        cols["fusion_rank"] += list(range(1, len(ids) + 1))
        seen[1] += 1
        if on_progress:
            on_progress(seen[1])

    async def tapped() -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
        async for item in records:
            _, kind, rec = item
            if clicks and kind == "e" and rec and str(rec.get("action_name")).lower() == "click":
                obj = ((rec.get("event_attributes") or {}).get("object") or {}).get("object_id")
                if obj is not None:
                    clicked.setdefault(str(rec.get("query_id")), set()).add(str(obj))
            yield item

    await replay(tapped(), group, values, on_search)
    if not blocks:
        raise CascadeError(f"no logged search of index {group.index} in the events (the service logs every search "
                           f"with CASCADE_EVENTS_LOG_QUERIES=all)")
    if clicks and labels is None:
        for qid, (start, ids) in where.items():
            hit = clicked.get(qid, set())
            cols["label"][start:start + len(ids)] = [int(d in hit) for d in ids]
    x = np.vstack(blocks)
    names = list(features.names)
    if x.shape[1] != len(names):
        raise CascadeError(f"the feature set has {len(names)} features but {x.shape[1]} were computed")
    write_log(out, cols, x, log_meta(group.index, "impressions", features, names))
    return {"searches": seen[1], "queries": len(static), "rows": len(x),
            "positives": int(sum(v > 0 for v in cols["label"]))}


def qrels_labels(qrels: Mapping[str, Mapping[str, int]], ids: Mapping[str, str]) -> LabelFn:
    """Labels of a search from judgments by query id (``ids``: normalized text -> query id)."""
    def label(rec: dict[str, Any], docs: list[str]) -> list[int]:
        judged = qrels.get(ids.get(normalize_query(str(rec.get("user_query") or "")), ""), {})
        return [int(judged.get(d, 0)) for d in docs]

    return label


def with_anonymous_copies(data: Any) -> Any:
    """The log plus, for every search that had a user or a segment, a copy as an anonymous search would see it
    (user and segment features at their defaults: affinity = the index-wide share, lift 0, no clicks).

    A personal model otherwise learns what to do for people it knows nothing about from the anonymous share of
    traffic alone; with the copies it learns it from every search, as a model without personal features would.
    ``data`` is a :class:`features.training.ltr.LogData`; the copies' query ids get a ``#anonymous`` suffix.
    """
    from features.personal import PERSONAL_NAMES
    from features.training.ltr import LogData

    col = {n: j for j, n in enumerate(data.names)}
    if not set(PERSONAL_NAMES) <= set(col):
        return data
    known = (data.x[:, col["pers.user.log_clicks"]] > 0) | (data.x[:, col["pers.segment.log_clicks"]] > 0)
    rows = np.isin(data.qids, np.unique(data.qids[known]))
    x = data.x[rows].copy()
    share = x[:, col["pers.global.share"]]
    for who in ("user", "segment"):
        x[:, col[f"pers.{who}.affinity"]] = share
        x[:, col[f"pers.{who}.lift"]] = 0.0
        x[:, col[f"pers.{who}.log_clicks"]] = 0.0
    qids = np.asarray([f"{q}#anonymous" for q in data.qids[rows]], dtype=object)
    return LogData(data.names, data.meta, np.concatenate([data.qids, qids]),
                   np.concatenate([data.doc_ids, data.doc_ids[rows]]), np.concatenate([data.labels, data.labels[rows]]),
                   np.concatenate([data.fusion_rank, data.fusion_rank[rows]]), np.vstack([data.x, x]))
