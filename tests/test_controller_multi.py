"""The controller's one-round-trip seam: a backend that answers every retriever at once (MultiRetriever)."""

import pytest

from cascade.candidates import Hit
from cascade.controller import Cascade
from cascade.errors import AllRetrieversFailed, BackendError
from cascade.query import Query
from cascade.retrieval import MultiRetriever
from tests.test_controller import Docs, ListRetriever, config


class Batched(Docs):
    """A document source that also answers retrievers in one call, like OpenSearch's _msearch."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.calls_many = answers, []

    async def retrieve_many(self, query, ks):
        self.calls_many.append(dict(ks))
        if isinstance(self.answers, BaseException):
            raise self.answers
        return self.answers


def make(answers):
    unused = ListRetriever("unused", [])  # per-retriever calls must not happen when the backend batches
    backend = Batched(answers)
    c = Cascade(config(), {"bm25": unused, "knn": unused}, [], backend)
    return c, backend, unused


async def test_one_call_for_every_retriever_with_a_trace_each():
    c, backend, unused = make({"bm25": [Hit("a", 9), Hit("b", 8)], "knn": [Hit("b", 0.9, {"title": "B"})]})
    assert isinstance(backend, MultiRetriever) and c.multi is backend
    res = await c.search(Query("q", size=2))
    assert backend.calls_many == [{"bm25": 5, "knn": 5}] and unused.seen_k is None
    assert [(t.name, t.n_out, t.error) for t in res.traces[:2]] == [("bm25", 2, None), ("knn", 1, None)]
    assert res.candidates.ids[:2] == ["b", "a"]
    assert backend.calls == [["a"]]  # b's fields came with its hit


async def test_an_item_error_degrades_only_that_retriever():
    c, *_ = make({"bm25": [Hit("a", 9)], "knn": BackendError("OpenSearch rejected the knn search (400): bad", 400)})
    res = await c.search(Query("q"))
    assert res.degraded == ["knn"] and "rejected the knn search" in res.traces[1].error
    assert res.candidates.ids == ["a"]


async def test_a_missing_answer_is_flagged_not_silently_empty():
    c, *_ = make({"bm25": [Hit("a", 9)]})
    res = await c.search(Query("q"))
    assert res.degraded == ["knn"] and "no answer for retriever 'knn'" in res.traces[1].error


async def test_a_backend_error_is_raised_and_other_failures_degrade_all():
    c, *_ = make(BackendError("index 'x' does not exist"))
    with pytest.raises(BackendError, match="does not exist"):
        await c.search(Query("q"))
    c, *_ = make(ConnectionResetError("peer went away"))
    with pytest.raises(AllRetrieversFailed, match="every retriever failed"):
        await c.search(Query("q"))


async def test_backends_without_the_seam_keep_per_retriever_calls():
    bm25, knn = ListRetriever("bm25", [Hit("a", 1)]), ListRetriever("knn", [Hit("b", 1)])
    c = Cascade(config(), {"bm25": bm25, "knn": knn}, [], Docs())
    assert c.multi is None
    await c.search(Query("q"))
    assert bm25.seen_k == 5 and knn.seen_k == 5
