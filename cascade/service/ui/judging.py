"""The workbench's judgments over HTTP: a query's labels, judging one document, the judged queries, export
and import. What is kept and how is :mod:`cascade.ui.judgments` (a qrels file per index, in the dataset
layout, so that ``cascade eval`` and ``cascade tune`` read it as is); this is who may, and the answers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Query as QueryParam, Request
from fastapi.responses import Response

from cascade.service.errors import ApiError
from cascade.service.ui.access import Access, errors
from cascade.service.ui.run import holding
from cascade.service.ui.schemas import (
    ImportResult, JudgedQueries, JudgedQuery, JudgmentPut, LabelsResponse, QueryJudgments,
)
from cascade.settings import Settings
from cascade.text import normalize_query
from cascade.ui.judgments import (
    SPLIT, Judged, JudgmentError, JudgmentStore, QueryLabels, Row, dataset_judgments, labels_for, parse_import,
)

if TYPE_CHECKING:
    from cascade.service.registry import IndexEntry
    from cascade.service.state import ServiceState


class Labels:
    """A query's labels as every view shows them: its dataset's (every split), the workbench's over them."""

    def __init__(self, store: JudgmentStore, settings: Settings):
        self.store, self.settings = store, settings

    async def of(self, index: str, text: str) -> QueryLabels:
        def read() -> QueryLabels:
            return labels_for(text, self.store.load(index), dataset_judgments(index, self.settings))
        try:
            return await asyncio.to_thread(read)
        except JudgmentError as exc:
            raise ApiError(500, None, str(exc), "judgments_unreadable") from None

    @staticmethod
    def summary(lab: QueryLabels) -> QueryJudgments:
        return QueryJudgments(query_id=lab.query_id, judged=len(lab.labels),
                              relevant=sum(1 for g in lab.labels.values() if g > 0))


def known(state: ServiceState, index: str) -> IndexEntry:
    """An index the service has (loading or not): judgments and evaluations do not need it opened."""
    entry = state.registry.entries.get(index)
    return entry if entry is not None else state.entry(index)  # state.entry: the 404 naming the indexes


async def unknown_documents(state: ServiceState, entry: IndexEntry, ids: list[str]) -> set[str]:
    """Which of ``ids`` the index does not hold (a judgment of a typo would count against every profile)."""
    casc = entry.opened.cascade() if entry.opened else None
    if casc is None or casc.documents is None:
        return set()
    ids = list(dict.fromkeys(ids))
    missing: set[str] = set()
    async with holding(state, entry):
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            missing.update(d for d, doc in zip(chunk, await casc.documents.fetch(chunk)) if doc is None)
    return missing


def judgments_router(state: ServiceState, access: Access, store: JudgmentStore, labels: Labels) -> APIRouter:
    router = APIRouter()
    settings = state.settings

    @router.get("/v1/indexes/{index}/judgments", response_model=LabelsResponse, tags=["workbench"],
                responses=errors(401, 403, 404, 422), summary="The relevance labels of one query")
    async def get_labels(index: str, request: Request,
                         query: str = QueryParam(min_length=1, max_length=2048, description="The query text.")
                         ) -> LabelsResponse:
        access.may_read(request)
        known(state, index)
        lab = await labels.of(index, query)
        return LabelsResponse(index=index, query=normalize_query(query), query_id=lab.query_id, labels=lab.labels,
                              sources=lab.sources)

    @router.put("/v1/indexes/{index}/judgments", response_model=LabelsResponse, tags=["workbench"],
                responses=errors(401, 403, 404, 413, 422, 503),
                summary="Judge one document for one query (grade 0-4; null removes it); saved as qrels at once")
    async def put_judgment(index: str, body: JudgmentPut, request: Request) -> LabelsResponse:
        access.may_write(request)
        entry = state.entry(index)
        if body.grade is not None:
            missing = await unknown_documents(state, entry, [body.doc_id])
            if missing:
                raise ApiError(422, "doc_id", f"index {index} has no document {body.doc_id!r}", "unknown_document")
        def save() -> QueryLabels:
            return store.put(index, body.query, body.doc_id, body.grade, dataset_judgments(index, settings))
        try:
            lab = await asyncio.to_thread(save)
        except JudgmentError as exc:
            raise ApiError(422, exc.field, str(exc), "invalid") from None
        return LabelsResponse(index=index, query=normalize_query(body.query), query_id=lab.query_id,
                              labels=lab.labels, sources=lab.sources)

    @router.get("/v1/indexes/{index}/judgments/queries", response_model=JudgedQueries, tags=["workbench"],
                responses=errors(401, 403, 404, 422),
                summary="Judged queries of the index: the workbench's, then its dataset's")
    async def judged_queries(index: str, request: Request,
                             limit: int = QueryParam(2000, ge=1, le=100_000, description="At most this many.")
                             ) -> JudgedQueries:
        access.may_read(request)
        known(state, index)

        def read() -> tuple[Judged, Judged | None]:
            return store.load(index), dataset_judgments(index, settings)
        try:
            ui, ds = await asyncio.to_thread(read)
        except JudgmentError as exc:
            raise ApiError(500, None, str(exc), "judgments_unreadable") from None
        out: list[JudgedQuery] = []
        for qid in sorted(ui.qrels, key=lambda q: ui.queries.get(q, q)):
            docs = ui.qrels[qid]
            if docs and qid in ui.queries:
                out.append(JudgedQuery(query_id=qid, query=ui.queries[qid], judged=len(docs),
                                       relevant=sum(1 for g in docs.values() if g > 0), source=SPLIT))
        if ds is not None:
            seen = {q.query_id for q in out}
            for qid, docs in ds.qrels.items():
                if qid in ds.queries and qid not in seen:
                    out.append(JudgedQuery(query_id=qid, query=ds.queries[qid], judged=len(docs),
                                           relevant=sum(1 for g in docs.values() if g > 0),
                                           source=ds.splits.get(qid, "")))
        return JudgedQueries(index=index, ui_judgments=ui.count, folder=f"{index}/qrels/{SPLIT}.tsv",
                             queries=out[:limit])

    @router.get("/v1/indexes/{index}/judgments/export", tags=["workbench"], response_class=Response,
                responses={200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}},
                                             "text/tab-separated-values": {"schema": {"type": "string"}}},
                                 "description": "jsonl: one judgment per line with its query text (what import "
                                                "reads back); tsv: the qrels file (query-id, corpus-id, score)"},
                           **errors(401, 403, 404, 422)},
                summary="The workbench's judgments of the index, as a file")
    async def export(index: str, request: Request,
                     format: Literal["jsonl", "tsv"] = QueryParam("jsonl")) -> Response:  # noqa: A002
        access.may_read(request)
        known(state, index)
        try:
            text = await asyncio.to_thread(store.export, index, format)
        except JudgmentError as exc:
            raise ApiError(500, None, str(exc), "judgments_unreadable") from None
        media = "application/x-ndjson" if format == "jsonl" else "text/tab-separated-values"
        name = f"{index}-judgments.{format}"
        return Response(text, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @router.post("/v1/indexes/{index}/judgments/import", response_model=ImportResult, tags=["workbench"],
                 responses=errors(401, 403, 404, 413, 422, 503),
                 openapi_extra={"requestBody": {"required": True, "content": {"text/plain": {"schema": {
                     "type": "string", "description": "JSON lines as export writes them (query, doc_id, grade, "
                                                      "optional query_id), or a qrels file (BEIR TSV or TREC) "
                                                      "whose query ids the index's dataset or judgments know"}}}}},
                 summary="Import judgments (merged into the saved ones, or replacing them)")
    async def import_judgments(index: str, request: Request,
                               mode: Literal["merge", "replace"] = QueryParam("merge")) -> ImportResult:
        access.may_write(request)
        known(state, index)
        raw = await request.body()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ApiError(422, "body", f"not UTF-8 text (byte {exc.start + 1})", "invalid") from None

        def parse() -> list[Row]:
            ui, ds = store.load(index), dataset_judgments(index, settings)
            return parse_import(text, {**(ds.queries if ds else {}), **ui.queries})
        try:
            rows = await asyncio.to_thread(parse)
        except JudgmentError as exc:
            raise ApiError(422, exc.field, str(exc), "invalid") from None
        entry = state.entry(index)  # only now, and held at once: a reload may close it during an await
        missing = await unknown_documents(state, entry, [r.doc_id for r in rows])
        if missing:
            bad = next(r for r in rows if r.doc_id in missing)
            raise ApiError(422, "doc_id", f"line {bad.line}: index {index} has no document {bad.doc_id!r}",
                           "unknown_document")
        try:
            ui, n = await asyncio.to_thread(store.merge, index, rows, mode == "replace")
        except JudgmentError as exc:
            raise ApiError(422, exc.field, str(exc), "invalid") from None
        return ImportResult(index=index, imported=n, ui_judgments=ui.count)

    return router
