"""Relevance judgments for the workbench: the index's dataset qrels (read-only) under the ones saved from the UI.

Judgments made in the workbench are saved per index as a BEIR folder, the
layout every dataset here has, so the tools that read datasets read them as is::

    JUDGMENTS_DIR/INDEX/queries.jsonl     {"_id": "ui-3f2a...", "text": "statins and heart disease"}
    JUDGMENTS_DIR/INDEX/qrels/ui.tsv      query-id <TAB> corpus-id <TAB> score (graded 0-4)

``cascade eval --dataset JUDGMENTS_DIR/INDEX --split ui`` and ``cascade tune
--dataset JUDGMENTS_DIR/INDEX --split ui`` use them directly (a dataset given
as a path is that folder). ``JUDGMENTS_DIR`` is ``CASCADE_JUDGMENTS_DIR``, by
default beside the indexes (``.cascade/judgments``); the shared data folder
(``CASCADE_DATA_DIR``) is never written.

A query judged in the UI keeps the id its dataset gives the same text (compared
after Unicode normalization and case folding), so UI judgments extend a
collection's own; a new query gets ``ui-`` and a hash of its text. Where both
judge a document, the UI's grade wins (it is the newer, deliberate one).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from cascade.errors import DatasetError
from cascade.settings import Settings
from cascade.text import normalize_query
from cascade.ui.files import locked, write_atomic

SPLIT = "ui"
MAX_GRADE = 4
MAX_JUDGMENTS = 100_000  # per index: a bound on what a client can make the service write
MAX_QUERY_CHARS = 2048
MAX_DOC_ID_CHARS = 512
_INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def judgments_root(settings: Settings) -> Path:
    return Path(settings.judgments_dir) if settings.judgments_dir else Path(settings.index_dir).parent / "judgments"


def query_key(text: str) -> str:
    """Two texts of one query compare equal: NFKC, whitespace collapsed, case folded."""
    return normalize_query(text).casefold()


@dataclass
class Judged:
    """Judged queries from one source: ``queries`` (id -> text) and ``qrels`` (id -> document -> grade)."""

    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)  # query id -> the split that judged it (datasets)
    _by_key: dict[str, str] | None = field(default=None, repr=False, compare=False)  # built on first lookup

    def id_of(self, text: str) -> str | None:
        """The id of the query ``text`` (the first of equal texts), as these judgments were loaded."""
        if self._by_key is None:
            self._by_key = {}
            for qid, t in self.queries.items():
                self._by_key.setdefault(query_key(t), qid)
        return self._by_key.get(query_key(text))

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.qrels.values())

    def rows(self) -> list[tuple[str, str, int]]:
        """Every judgment as (query id, document, grade), in the order the qrels file lists them."""
        return [(q, d, g) for q in sorted(self.qrels) for d, g in sorted(self.qrels[q].items())]


def qrels_tsv(rows: Iterable[tuple[str, str, int]]) -> str:
    """A BEIR qrels file: the header ``query-id corpus-id score``, then one tab-separated line per judgment."""
    return "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in rows)


@dataclass
class QueryLabels:
    """What is known about one query's documents: its id, each judged document's grade and where it came from."""

    query_id: str | None
    labels: dict[str, int]
    sources: dict[str, str]  # document -> "ui" or the dataset split


def labels_for(text: str, ui: Judged, dataset: Judged | None, qid: str | None = None) -> QueryLabels:
    """Every label of the query ``text`` (or of query ``qid``, when known): the dataset's, then the UI's over them."""
    qid = qid or (dataset.id_of(text) if dataset else None) or ui.id_of(text)
    labels: dict[str, int] = {}
    sources: dict[str, str] = {}
    if dataset is not None and qid in dataset.qrels:
        split = dataset.splits.get(qid, "")
        for d, g in dataset.qrels[qid].items():
            labels[d], sources[d] = g, split
    if qid is not None:
        for d, g in ui.qrels.get(qid, {}).items():
            labels[d], sources[d] = g, SPLIT
    return QueryLabels(qid, labels, sources)


# ---------------------------------------------------------------- the index's dataset (read-only)

_dataset_cache: dict[Path, tuple[tuple, Judged]] = {}
_dataset_lock = threading.Lock()


def dataset_judgments(index: str, settings: Settings) -> Judged | None:
    """The qrels of the dataset named like the index (as ``cascade eval`` pairs them), every split merged;
    None when there is none locally (nothing is downloaded). Re-read when its files change."""
    from cascade.datasets import load_qrels, load_queries, locate_dataset, qrels_splits

    if not _INDEX_NAME.match(index):
        return None
    try:
        folder = locate_dataset(index, settings, download=False)
    except DatasetError:
        return None
    splits = qrels_splits(folder)
    files = [folder / "queries.jsonl", *(folder / "qrels" / f"{s}.tsv" for s in splits)]
    try:
        stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    except OSError:
        return None
    with _dataset_lock:
        hit = _dataset_cache.get(folder)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    try:
        queries = load_queries(folder)
        judged = Judged(queries=queries)
        for split in splits:
            for qid, docs in load_qrels(folder, split).items():
                judged.qrels.setdefault(qid, {}).update(docs)
                judged.splits.setdefault(qid, split)
    except DatasetError:
        return None
    with _dataset_lock:
        _dataset_cache[folder] = (stamp, judged)
    return judged


# ---------------------------------------------------------------- judgments made in the workbench


class JudgmentError(ValueError):
    """A judgment or an imported line that cannot be saved: ``field`` names the part, ``line`` the line."""

    def __init__(self, field: str, message: str, line: int | None = None):
        self.field, self.line = field, line
        super().__init__(f"line {line}: {message}" if line else message)


@dataclass(frozen=True)
class Row:
    """One judgment to save: the query (its id and text), the document and its grade."""

    query_id: str
    query: str
    doc_id: str
    grade: int
    line: int | None = None


def new_query_id(text: str) -> str:
    return "ui-" + hashlib.blake2b(query_key(text).encode("utf-8", "replace"), digest_size=6).hexdigest()


def check_grade(grade: Any, field_name: str = "grade", line: int | None = None) -> int:
    if isinstance(grade, bool) or not isinstance(grade, int) or not 0 <= grade <= MAX_GRADE:
        raise JudgmentError(field_name, f"a grade is a whole number from 0 (not relevant) to {MAX_GRADE}, "
                                        f"got {grade!r}", line)
    return grade


def _check_text(value: Any, field_name: str, limit: int, line: int | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise JudgmentError(field_name, f"{field_name} must be a non-empty string", line)
    if len(value) > limit:
        raise JudgmentError(field_name, f"{field_name} is {len(value)} characters; the limit is {limit}", line)
    if any(c in value for c in "\t\r\n"):
        raise JudgmentError(field_name, f"{field_name} may not hold tabs or line breaks (qrels files are "
                                        f"tab-separated lines)", line)
    return value


class JudgmentStore:
    """The workbench's judgments of every index under one folder. Each change is a read-modify-write under
    the index folder's lock (threads of this service and other processes alike: two judges must not lose
    each other's grade), and every file is replaced whole (:mod:`cascade.ui.files`), so ``cascade eval``
    reading meanwhile never sees half a file."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()  # flock is per open file, not per thread: this orders the threads first

    def folder(self, index: str) -> Path:
        if not _INDEX_NAME.match(index):
            raise JudgmentError("index", f"{index!r} is not an index name")
        return self.root / index

    def load(self, index: str) -> Judged:
        from cascade.datasets import load_qrels, load_queries

        folder = self.folder(index)
        if not (folder / "queries.jsonl").is_file():
            return Judged()
        try:
            queries = load_queries(folder)
            qrels = load_qrels(folder, SPLIT) if (folder / "qrels" / f"{SPLIT}.tsv").is_file() else {}
        except DatasetError as exc:
            raise JudgmentError("judgments", f"the saved judgments of {index} cannot be read: "
                                             f"{str(exc).rsplit('/', 1)[-1]}") from None
        return Judged(queries=queries, qrels=qrels, splits={q: SPLIT for q in qrels})

    def put(self, index: str, query: str, doc_id: str, grade: int | None, dataset: Judged | None = None) -> QueryLabels:
        """Judge (or, with ``grade`` None, un-judge) one document for one query; the query's labels after it."""
        query = _check_text(query, "query", MAX_QUERY_CHARS)
        doc_id = _check_text(doc_id, "doc_id", MAX_DOC_ID_CHARS)
        if grade is not None:
            check_grade(grade)
        with self._lock, locked(self.folder(index)):
            ui = self.load(index)
            qid = (dataset.id_of(query) if dataset else None) or ui.id_of(query) or new_query_id(query)
            docs = ui.qrels.setdefault(qid, {})
            if grade is None:
                docs.pop(doc_id, None)
            else:
                if doc_id not in docs and ui.count >= MAX_JUDGMENTS:
                    raise JudgmentError("doc_id", f"index {index} already has {MAX_JUDGMENTS} judgments from the "
                                                  f"workbench (the limit); export and prune them")
                docs[doc_id] = grade
                ui.queries.setdefault(qid, normalize_query(query))
            self._write(index, ui)
        return labels_for(query, ui, dataset, qid)

    def merge(self, index: str, rows: Iterable[Row], replace: bool = False) -> tuple[Judged, int]:
        """Save imported rows over (or, ``replace``, instead of) the index's judgments; (all of them, rows saved)."""
        rows = list(rows)
        with self._lock, locked(self.folder(index)):
            ui = Judged() if replace else self.load(index)
            for r in rows:
                ui.qrels.setdefault(r.query_id, {})[r.doc_id] = r.grade
                ui.queries.setdefault(r.query_id, normalize_query(r.query))
            if ui.count > MAX_JUDGMENTS:
                raise JudgmentError("body", f"the import would leave {ui.count} judgments for index {index}; "
                                            f"the limit is {MAX_JUDGMENTS}")
            self._write(index, ui)
        return ui, len(rows)

    def _write(self, index: str, ui: Judged) -> None:
        folder = self.folder(index)
        live = sorted(q for q, docs in ui.qrels.items() if docs)  # a query with no judgment left is dropped
        queries = "".join(json.dumps({"_id": q, "text": ui.queries[q]}, ensure_ascii=False) + "\n"
                          for q in live if q in ui.queries)
        write_atomic(folder / "queries.jsonl", queries)  # first: a qrels line never names an unknown query
        write_atomic(folder / "qrels" / f"{SPLIT}.tsv", qrels_tsv(ui.rows()))

    # ------------------------------------------------------------ export and import

    def export(self, index: str, fmt: str) -> str:
        """``jsonl``: one self-contained line per judgment (query text included; what import reads back);
        ``tsv``: the qrels file itself (BEIR: query-id, corpus-id, score)."""
        ui = self.load(index)
        if fmt == "tsv":
            return qrels_tsv(ui.rows())
        return "".join(json.dumps({"query_id": q, "query": ui.queries.get(q, ""), "doc_id": d, "grade": g},
                                  ensure_ascii=False) + "\n" for q, d, g in ui.rows())


def parse_import(text: str, known: dict[str, str]) -> list[Row]:
    """Rows from an export of this workbench (JSON lines with the query text) or a qrels file (BEIR TSV or
    TREC's four columns), whose query ids must then be ones ``known`` (id -> text) holds."""
    rows: list[Row] = []
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if not first:
        raise JudgmentError("body", "nothing to import: the file is empty")
    as_json = first.startswith("{")
    by_key: dict[str, str] = {}
    for q, t in known.items():
        by_key.setdefault(query_key(t), q)
    for n, raw in enumerate(lines, start=1):
        line = raw.strip("\r\n")
        if not line.strip():
            continue
        if as_json:
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise JudgmentError("body", f"not valid JSON ({exc})", n) from None
            if not isinstance(rec, dict):
                raise JudgmentError("body", "expected a JSON object with query, doc_id and grade", n)
            extra = sorted(set(rec) - {"query", "query_id", "doc_id", "grade"})
            if extra:
                raise JudgmentError(extra[0], "unknown key (a line has query, doc_id, grade and optionally "
                                              "query_id)", n)
            qtext = _check_text(rec.get("query"), "query", MAX_QUERY_CHARS, n)
            doc = _check_text(rec.get("doc_id"), "doc_id", MAX_DOC_ID_CHARS, n)
            grade = check_grade(rec.get("grade"), "grade", n)
            qid = rec.get("query_id")
            if qid is not None:
                qid = _check_text(qid, "query_id", 256, n)
                if qid in known and query_key(known[qid]) != query_key(qtext):
                    raise JudgmentError("query_id", f"query id {qid} is the query {known[qid]!r} here, "
                                                    f"not {qtext!r}", n)
            rows.append(Row(qid or by_key.get(query_key(qtext)) or new_query_id(qtext), qtext, doc, grade, n))
            continue
        parts = line.split("\t")
        if n == 1 and parts[0] in ("query-id", "query_id", "qid"):
            continue
        if len(parts) == 4:
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise JudgmentError("body", "expected query-id, corpus-id and score separated by tabs (or JSON lines "
                                        "with the query text)", n)
        qid, doc, score = (p.strip() for p in parts)
        if qid not in known:
            raise JudgmentError("query-id", f"query id {qid!r} is not a query of this index's dataset or "
                                            f"judgments; import JSON lines with the query text instead", n)
        try:
            grade = int(score)
        except ValueError:
            raise JudgmentError("score", f"score {score!r} is not a whole number", n) from None
        rows.append(Row(qid, known[qid], _check_text(doc, "corpus-id", MAX_DOC_ID_CHARS, n),
                        check_grade(grade, "score", n), n))
    return rows

