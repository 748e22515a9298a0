"""The controller's contract, with small in-process retrievers and stages written for the test.

These are real implementations of the Retriever and Stage protocols (deterministic
lists and scores), not mocks of an external service.
"""

import asyncio

import numpy as np
import pytest

from cascade.candidates import Hit
from cascade.config import parse_config
from cascade.controller import Cascade
from cascade.builder import open_cascade
from cascade.errors import AllRetrieversFailed, QueryError
from cascade.query import Query
from cascade.stages.base import Reranker


class ListRetriever:
    def __init__(self, name, hits, delay=0.0, fail=False):
        self.name, self.hits, self.delay, self.fail = name, hits, delay, fail
        self.seen_k = None

    async def retrieve(self, query, k):
        self.seen_k = k
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("backend down")
        return self.hits[:k]


class Docs:
    def __init__(self):
        self.calls = []

    async def fetch(self, ids):
        self.calls.append(list(ids))
        return [{"title": f"doc {i}", "text": f"text of {i}"} for i in ids]


class ScoreBy(Reranker):
    """Scores candidates by a fixed table (a stand-in for a model whose output we choose)."""

    kind = "test_scorer"

    def __init__(self, name, table, rerank=None, keep=None, fail=False):
        super().__init__(name, rerank, keep)
        self.table, self.fail, self.seen = table, fail, []

    async def score(self, query, candidates, deadline):
        self.seen.append(list(candidates.ids))
        if self.fail:
            raise RuntimeError("model exploded")
        return np.array([self.table.get(i, 0.0) for i in candidates.ids])


def config(**kw):
    base = {"index": "t", "retrievers": {"bm25": {"k": 5}, "knn": {"k": 5}}, "fusion": {"method": "rrf", "k": 0, "keep": 4}}
    base.update(kw)
    return parse_config(base, "t.yaml")


def make(stages=(), bm25_fail=False, delay=0.0):
    bm25 = ListRetriever("bm25", [Hit("a", 9), Hit("b", 8), Hit("c", 7), Hit("d", 6), Hit("e", 5), Hit("f", 4)],
                         delay=delay, fail=bm25_fail)
    knn = ListRetriever("knn", [Hit("c", 0.9, {"title": "C"}), Hit("g", 0.8), Hit("a", 0.7)], delay=delay)
    docs = Docs()
    return Cascade(config(), {"bm25": bm25, "knn": knn}, list(stages), docs), bm25, knn, docs


async def test_retrievers_fusion_and_trace():
    c, bm25, knn, docs = make()
    res = await c.search(Query("q", size=3))
    assert bm25.seen_k == 5 and knn.seen_k == 5
    # RRF k=0: a = 1 + 1/3, c = 1/3 + 1, b = 1/2, g = 1/2 -> keep 4
    assert res.candidates.ids == ["a", "c", "b", "g"]
    names = [(t.name, t.kind, t.n_in, t.n_out) for t in res.traces]
    assert names == [("bm25", "retriever", 0, 5), ("knn", "retriever", 0, 3), ("fusion", "fusion", 6, 4)]
    assert res.traces[0].ids == ["a", "b", "c", "d", "e"]
    assert all(t.ms >= 0 and t.elapsed_ms >= t.ms for t in res.traces)
    # fields: knn gave c's fields; only the page (size 3) is fetched, in one call: g (4th) is never read
    assert docs.calls == [["a", "b"]]
    assert res.candidates.fields[1] == {"title": "C"}
    hits = res.hits(explain=True)
    assert [h["id"] for h in hits] == ["a", "c", "b"]
    assert hits[0]["retrievers"] == {"bm25": {"score": 9.0, "rank": 1}, "knn": {"score": 0.7, "rank": 3}}


async def test_retrievers_run_concurrently():
    c, *_ = make(delay=0.2)
    res = await c.search(Query("q"))
    fusion = res.traces[2]
    # Both retrievers slept 0.2 s; run one after the other they would need 0.4 s.
    assert fusion.elapsed_ms < 380


async def test_stage_rerank_window_and_keep():
    s1 = ScoreBy("s1", {"a": 0.1, "c": 0.5, "b": 0.9}, rerank=3, keep=4)
    s2 = ScoreBy("s2", {"a": 5.0, "b": 1.0}, rerank=2, keep=2)
    c, *_ = make([s1, s2])
    res = await c.search(Query("q", size=2))
    # s1 scored only the top 3 (a, c, b); g stays below them in its previous place.
    assert s1.seen == [["a", "c", "b"]]
    assert res.traces[3].ids == ["b", "c", "a", "g"] and res.traces[3].scored == 3
    assert s2.seen == [["b", "c"]]
    assert res.candidates.ids == ["b", "c"] and res.traces[4].n_in == 4 and res.traces[4].n_out == 2
    assert res.traces[4].scored == 2
    st = res.candidates.stage_scores
    assert st["s1"].tolist() == [0.9, 0.5] and st["s2"].tolist() == [1.0, 0.0]


async def test_rescored_rank_above_the_rest_and_score_is_last_stage():
    s = ScoreBy("s", {"b": -100.0, "c": -200.0}, rerank=2)
    c, *_ = make([s])
    res = await c.search(Query("q", size=4))
    # a and c re-scored (negative scores) still rank above b and g, which were not.
    assert res.candidates.ids == ["a", "c", "b", "g"]
    assert res.candidates.score[0] == 0.0 and res.candidates.score[1] == -200.0
    assert np.isnan(res.candidates.stage_scores["s"][2])


async def test_failing_stage_degrades_and_is_flagged():
    boom = ScoreBy("boom", {}, fail=True)
    after = ScoreBy("after", {"g": 1.0})
    c, *_ = make([boom, after])
    res = await c.search(Query("q", size=4))
    assert res.degraded == ["boom"]
    assert "model exploded" in res.traces[3].error and res.traces[3].scored == 0
    assert res.candidates.ids[0] == "g"  # later stages still ran on the fusion order


async def test_failing_retriever_degrades():
    c, *_ = make(bm25_fail=True)
    res = await c.search(Query("q"))
    assert res.degraded == ["bm25"] and "backend down" in res.traces[0].error
    assert res.candidates.ids == ["c", "g", "a"]


async def test_every_retriever_failing_is_an_error():
    c, bm25, knn, _ = make(bm25_fail=True)
    knn.fail = True
    with pytest.raises(AllRetrieversFailed, match="every retriever failed"):
        await c.search(Query("q"))


async def test_query_is_validated_before_anything_runs():
    c, bm25, *_ = make()
    with pytest.raises(QueryError) as e:
        await c.search(Query("ok", size=1000))
    assert e.value.field == "size" and bm25.seen_k is None


async def test_pagination_offsets_into_final_order():
    c, *_ = make()
    res = await c.search(Query("q", size=2, offset=2))
    assert [h["id"] for h in res.hits()] == ["b", "g"]


def test_plan_mirrors_config():
    s = ScoreBy("s", {}, rerank=3, keep=2)
    c, *_ = make([s])
    plan = c.plan()
    assert [p["name"] for p in plan] == ["bm25", "knn", "fusion", "s"]
    assert plan[2] == {"name": "fusion", "type": "rrf", "keep": 4, "k": 0}
    assert plan[3]["rerank"] == 3 and plan[3]["keep"] == 2


async def test_combine_orders_by_weighted_normalized_scores():
    from cascade.stages.base import Combine

    s1 = ScoreBy("s1", {"a": 3.0, "c": 2.0, "b": 1.0, "g": 0.0})
    # s2 alone would put g first; combined with s1 (z-scores, equal weights) a stays on top.
    s2 = ScoreBy("s2", {"a": 0.0, "c": 1.0, "b": 2.0, "g": 3.0},
                 )
    s2.combine = Combine(weights={"s1": 1.0, "s2": 1.0}, normalize="zscore")
    c, *_ = make([s1, s2])
    res = await c.search(Query("q", size=4))
    # z(s1) = [1.34, .45, -.45, -1.34] for a, c, b, g; z(s2) is the mirror: every sum is 0 -> ties keep s1's order
    assert res.candidates.ids == ["a", "c", "b", "g"]
    s2.combine = Combine(weights={"s1": 1.0, "s2": 2.0}, normalize="zscore")
    res = await c.search(Query("q", size=4))
    assert res.candidates.ids == ["g", "b", "c", "a"]
    assert res.candidates.stage_scores["s2"].tolist() == [3.0, 2.0, 1.0, 0.0]  # raw score kept for explain
    assert res.candidates.score[0] == pytest.approx(-1.3416 + 2 * 1.3416, rel=1e-3)


def test_combine_config_checks_names():
    from cascade.config import parse_config
    from cascade.errors import ConfigError

    base = {"index": "t", "stages": [{"type": "cross_encoder", "model": "m", "combine": {"weights": {"ltr": 1, "cross_encoder": 1}}}]}
    with pytest.raises(ConfigError) as e:
        parse_config(base, "t.yaml")
    assert e.value.key == "stages.0.combine.weights.ltr" and "fusion" in e.value.reason
    base["stages"][0]["combine"]["weights"] = {"fusion": 1, "cross_encoder": 2}
    assert parse_config(base, "t.yaml").stages[0].combine.weights == {"fusion": 1, "cross_encoder": 2}


class Slow(ScoreBy):
    """Costs 20 ms per candidate, so a budget can only cover a few."""

    async def score(self, query, candidates, deadline):
        await asyncio.sleep(0.02 * len(candidates))
        return await super().score(query, candidates, deadline)


async def test_budget_shrinks_then_skips_a_slow_stage():
    slow = Slow("slow", {"g": 9.0, "b": 8.0})
    c, *_ = make([slow])
    first = await c.search(Query("q", size=4), budget_ms=5_000)  # learns the cost: ~20 ms per candidate
    assert first.traces[-1].scored == 4 and first.traces[-1].note is None
    res = await c.search(Query("q", size=4), budget_ms=50)
    tr = res.traces[-1]
    assert tr.note and tr.note.startswith("shrunk to") and 0 < tr.scored < 4
    # the unscored rest follows in fusion order, below the scored ones
    assert res.candidates.ids[tr.scored:] == [i for i in first.traces[2].ids if i not in res.candidates.ids[: tr.scored]]
    res = await c.search(Query("q", size=4), budget_ms=1)
    tr = res.traces[-1]
    assert tr.note.startswith("skipped") and tr.scored == 0 and res.candidates.ids == first.traces[2].ids
    assert res.degraded == []  # a budget decision is not a failure; it is in the trace's note


def test_disabled_stage_is_not_built(tiny_index):
    """The per-index gate: a disabled stage's model is never loaded (this one could not be)."""
    from tests.conftest import tiny_config

    _, settings = tiny_index
    off = tiny_config(stages=[{"type": "cross_encoder", "model": "no-such-model", "enabled": False}])
    c = open_cascade(off, settings)
    assert c.stages == [] and [p["name"] for p in c.plan()] == ["bm25", "knn", "fusion"]
    on = tiny_config(stages=[{"type": "cross_encoder", "model": "no-such-model"}])
    from cascade.errors import ConfigError

    with pytest.raises(ConfigError) as e:  # a missing model is a config error at its key
        open_cascade(on, settings)
    assert e.value.key == "stages.0.model" and "no-such-model" in e.value.reason


# --- regressions found in review ---------------------------------------------------------------------------------

async def test_response_score_is_monotonic_in_rank():
    """Regression: the unscored tail kept an earlier stage's scale, so score rose again below the re-scored head."""
    stage = ScoreBy("s", {"a": 0.2, "c": 0.1}, rerank=2)  # tiny scores; fusion's tail is on a larger scale
    c, *_ = make([stage])
    res = await c.search(Query("q", size=4))
    scores = [h["score"] for h in res.hits()]
    assert [h["id"] for h in res.hits()] == ["a", "c", "b", "g"]
    assert all(x >= y for x, y in zip(scores, scores[1:])), scores
    fusion = next(t for t in res.traces if t.name == "fusion").scores
    assert scores[2] - scores[3] == pytest.approx(fusion[2] - fusion[3])  # the tail keeps its spacing


async def test_stored_fields_are_fetched_only_for_what_a_stage_reads():
    """Regression: fields of every fused candidate were fetched when the first text-reading stage saw two."""

    class ReadsText(ScoreBy):
        text_fields = ("title",)

    c, bm25, knn, docs = make([ReadsText("s", {"b": 1.0}, rerank=2)])
    res = await c.search(Query("q", size=1))
    assert docs.calls == [["a"]]  # the stage's window is a and c (c came with knn's fields); the page is its top
    assert res.candidates.ids[0] == "a"


async def test_a_combine_source_that_did_not_run_adds_nothing():
    from cascade.stages.base import Combine

    first = ScoreBy("first", {}, fail=True)
    second = ScoreBy("second", {"b": 5.0, "a": 1.0}, rerank=3)
    second.combine = Combine(weights={"second": 1.0, "first": 3.0})
    c, *_ = make([first, second])
    res = await c.search(Query("q", size=3))
    assert res.degraded == ["first"] and res.candidates.ids[0] == "b"


def test_a_combine_naming_a_disabled_stage_is_refused_at_start_up():
    from cascade.config import parse_config
    from cascade.errors import ConfigError

    with pytest.raises(ConfigError, match=r"stages.1.combine.weights.ltr: stage ltr is disabled"):
        parse_config({"index": "t", "features": {"version": 1}, "stages": [
            {"type": "ltr", "model": "m", "enabled": False},
            {"type": "cross_encoder", "model": "m", "combine": {"weights": {"cross_encoder": 1, "ltr": 1}}}]}, "t.yaml")
