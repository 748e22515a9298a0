"""The embedded backend on a real (tiny) index: tantivy BM25, faiss kNN, filters, persistence."""

import json

import numpy as np
import pytest

from cascade.controller import Cascade
from cascade.builder import open_cascade
from cascade.errors import ConfigError, CorpusError, IndexNotFound, QueryError
from cascade.query import Query
from connectors.embedded import EmbeddedBackend, build_index, index_exists
from tests.conftest import TINY_DOCS, tiny_config


def backend(cfg, settings):
    return EmbeddedBackend(cfg, settings)


def validated(cfg, text, **kw):
    from cascade.query import validate_query

    return validate_query(Query(text, **kw), {n: f.type for n, f in cfg.fields.items()}, 100, 1000)


def test_build_persists_and_reopens(tiny_index):
    cfg, settings = tiny_index
    m = index_exists(cfg, settings)
    assert m["docs"] == 6 and m["dim"] == 384 and m["ann"] is None
    b = backend(cfg, settings)
    assert b.ids == [d["_id"] for d in TINY_DOCS]
    assert b.vectors.shape == (6, 384)
    assert np.allclose(np.linalg.norm(b.vectors, axis=1), 1.0, atol=1e-5)
    [d5] = b.fetch_rows([4])
    assert d5["journal"] == ["Energy", "Chemistry"] and d5["year"] == 2020 and "cites" not in d5


async def test_fetch_by_id(tiny_index):
    b = backend(*tiny_index)
    got = await b.fetch(["d3", "nope", "d1"])
    assert got[0]["title"] == "Protein folding" and got[1] is None and got[2]["journal"] == "Energy"


def test_bm25_ranks_matching_docs_and_stems(tiny_index):
    cfg, settings = tiny_index
    bm25 = backend(cfg, settings).retriever("bm25", cfg.retrievers["bm25"])
    hits = bm25.search(validated(cfg, "the solar panels"), 10)
    ids = [h.id for h in hits]
    assert ids[0] == "d1"  # title and text both match ("panels" -> "panel", "solar")
    assert set(ids) == {"d1", "d2", "d5"}  # "the" is a stop word and matches nothing
    assert all(h.score > 0 for h in hits)
    assert bm25.search(validated(cfg, "the of and"), 10) == []  # only stop words


def test_field_boosts_change_the_ranking(tiny_index):
    cfg, settings = tiny_index
    b = backend(cfg, settings)
    # "cells": d4 has it in the title, d1 only in the text ("cells" -> "cell")
    title_heavy = b.retriever("bm25", cfg.retrievers["bm25"].model_copy(update={"fields": {"title": 10.0, "text": 1.0}}))
    text_only = b.retriever("bm25", cfg.retrievers["bm25"].model_copy(update={"fields": {"text": 1.0}}))
    q = validated(cfg, "cells")
    assert [h.id for h in title_heavy.search(q, 10)][0] == "d4"
    th = {h.id: h.score for h in title_heavy.search(q, 10)}
    to = {h.id: h.score for h in text_only.search(q, 10)}
    assert th["d4"] > 5 * to["d4"]


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"journal": "Energy"}, {"d1", "d2", "d5"}),
        ({"journal": "Chemistry"}, {"d5"}),  # multi-valued keyword
        ({"journal": ["Biology", "Chemistry"]}, {"d3", "d4", "d5", "d6"}),
        ({"year": {"gte": 2019, "lt": 2021}}, {"d1", "d5"}),
        ({"year": 2015}, {"d3"}),
        ({"year": {"gt": 2021}}, {"d4"}),
        ({"published": {"gte": "2020-01-01", "lte": "2021-12-31"}}, {"d2", "d5"}),
        ({"cites": {"gte": 10}}, {"d1", "d3"}),
        ({"journal": "Energy", "year": {"lte": 2020}}, {"d1", "d5"}),
        ({"journal": "Nope"}, set()),
    ],
)
def test_filters_agree_between_bm25_and_knn(tiny_index, filters, expected):
    cfg, settings = tiny_index
    b = backend(cfg, settings)
    q = validated(cfg, "solar wind electricity cells protein fish", filters=filters)
    mask = b.filter_mask(q.parsed_filters)
    assert {b.ids[i] for i in np.flatnonzero(mask)} == expected
    bm25_ids = {h.id for h in b.retriever("bm25", cfg.retrievers["bm25"]).search(q, 10)}
    knn_ids = {h.id for h in b.retriever("knn", cfg.retrievers["knn"]).search(q, 10)}
    assert bm25_ids == expected  # every document matches some query term
    assert knn_ids == expected


def test_bm25_filter_does_not_change_scores(tiny_index):
    cfg, settings = tiny_index
    bm25 = backend(cfg, settings).retriever("bm25", cfg.retrievers["bm25"])
    plain = {h.id: h.score for h in bm25.search(validated(cfg, "solar electricity"), 10)}
    filt = {h.id: h.score for h in bm25.search(validated(cfg, "solar electricity", filters={"journal": "Energy"}), 10)}
    assert filt == pytest.approx({k: v for k, v in plain.items() if k in filt})


def test_knn_finds_semantic_match_without_shared_words(tiny_index):
    cfg, settings = tiny_index
    knn = backend(cfg, settings).retriever("knn", cfg.retrievers["knn"])
    hits = knn.search(validated(cfg, "marine animals that emit light"), 3)
    assert hits[0].id == "d6"
    assert hits[0].score > hits[1].score


def test_hnsw_path_matches_exact_search(settings):

    cfg = tiny_config(retrievers={"bm25": {"type": "bm25"}, "knn": {"type": "knn", "k": 6, "exact_max_docs": 2}})
    build_index(cfg, ((i, dict(d)) for i, d in enumerate(TINY_DOCS)), settings, source="t")
    b = backend(cfg, settings)
    assert index_exists(cfg, settings)["ann"] == "hnsw" and b.hnsw() is not None
    knn = b.retriever("knn", cfg.retrievers["knn"])
    exact = b.retriever("knn", cfg.retrievers["knn"].model_copy(update={"exact_max_docs": 100}))
    q = validated(cfg, "renewable energy")
    assert [h.id for h in knn.search(q, 6)] == [h.id for h in exact.search(q, 6)]
    qf = validated(cfg, "renewable energy", filters={"journal": "Biology"})
    assert [h.id for h in knn.search(qf, 6)] == [h.id for h in exact.search(qf, 6)]


def test_bad_corpus_record_stops_with_line_number(settings):
    docs = [dict(d) for d in TINY_DOCS]
    docs[2] = {**docs[2], "metadata": {"year": "nineteen"}}
    with pytest.raises(CorpusError) as e:
        build_index(tiny_config(), ((i + 1, d) for i, d in enumerate(docs)), settings, source="c.jsonl")
    assert e.value.line == 3 and "year" in e.value.reason and "expected a number" in e.value.reason
    assert index_exists(tiny_config(), settings) is None  # nothing half-built is left behind


def test_bad_corpus_record_skipped_and_counted(settings):
    docs = [dict(d) for d in TINY_DOCS]
    docs[2] = {**docs[2], "metadata": {"published": "someday"}}
    rep = build_index(tiny_config(), ((i + 1, d) for i, d in enumerate(docs)), settings, source="c", skip_bad=True)
    assert rep.docs == 5 and rep.skipped == 1


def test_missing_index_and_changed_fields(settings, tiny_index):
    cfg, _ = tiny_index
    with pytest.raises(IndexNotFound, match="cascade index"):
        backend(tiny_config(index="other"), settings)
    changed = tiny_config(fields={**json.loads(cfg.model_dump_json())["fields"], "year": {"type": "keyword", "source": "metadata.year"}})
    assert index_exists(changed, settings) is None
    with pytest.raises(ConfigError, match="fields.year"):
        backend(changed, settings)


async def test_cascade_end_to_end_on_tiny_index(tiny_index):
    cfg, settings = tiny_index
    c = open_cascade(cfg, settings)
    res = await c.search(Query("how do batteries store solar power", size=3, filters={"journal": "Energy"}))
    assert res.hits()[0]["id"] == "d5"
    assert all(h["fields"]["journal"] in ("Energy", ["Energy", "Chemistry"]) for h in res.hits())
    assert [t.name for t in res.traces] == ["bm25", "knn", "fusion"]
    with pytest.raises(QueryError) as e:
        await c.search(Query("solar", filters={"colour": "red"}))
    assert e.value.field == "filters.colour"


def _race(fn, n=8):
    """Call ``fn`` from ``n`` threads released together; their results in thread order."""
    import threading

    barrier = threading.Barrier(n)
    out: list = [None] * n
    errors: list = []

    def worker(i):
        try:
            barrier.wait()
            out[i] = fn()
        except BaseException as e:  # surfaced below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return out


def test_flat_index_built_once_under_concurrent_first_queries(tiny_index, monkeypatch):
    import time

    import faiss

    real, built = faiss.IndexFlatIP, []

    def slow_flat(*a):  # widen the window in which an unguarded check-then-build races
        built.append(1)
        time.sleep(0.05)
        return real(*a)

    monkeypatch.setattr(faiss, "IndexFlatIP", slow_flat)
    b = backend(*tiny_index)
    got = _race(b.flat)
    assert len(built) == 1
    assert all(g is got[0] for g in got) and got[0] is b.flat() and got[0].ntotal == 6


def test_hnsw_index_read_once_under_concurrent_first_queries(settings, monkeypatch):
    import time

    import faiss

    cfg = tiny_config(retrievers={"bm25": {"type": "bm25"}, "knn": {"type": "knn", "k": 6, "exact_max_docs": 2}})
    build_index(cfg, ((i, dict(d)) for i, d in enumerate(TINY_DOCS)), settings, source="t")
    real, reads = faiss.read_index, []

    def slow_read(*a):
        reads.append(1)
        time.sleep(0.05)
        return real(*a)

    monkeypatch.setattr(faiss, "read_index", slow_read)
    b = backend(cfg, settings)
    got = _race(b.hnsw)
    assert len(reads) == 1
    assert got[0] is not None and all(g is got[0] for g in got) and got[0] is b.hnsw()


async def test_fetch_many_ids_parses_off_the_event_loop(tiny_index, monkeypatch):
    import threading

    from connectors.embedded import INLINE_FETCH_ROWS

    b = backend(*tiny_index)
    real, calls = b.fetch_rows, []

    def recording(rows):
        calls.append(threading.get_ident())
        return real(rows)

    monkeypatch.setattr(b, "fetch_rows", recording)
    known = [d["_id"] for d in TINY_DOCS]
    ids = (known * (INLINE_FETCH_ROWS // len(known) + 2))[::-1]
    ids.insert(5, "nope")
    assert len(ids) - 1 > INLINE_FETCH_ROWS
    got = await b.fetch(ids)
    expected = [None if i == "nope" else real([b.row_of[i]])[0] for i in ids]
    assert got == expected and got[5] is None and len(got) == len(ids)
    assert len(calls) == 1 and calls[0] != threading.get_ident()

    calls.clear()  # a handful of rows is parsed inline: no thread hop
    few = await b.fetch(["d2", "nope", "d6"])
    assert few == [real([1])[0], None, real([5])[0]]
    assert calls == [threading.get_ident()]
