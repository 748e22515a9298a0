"""The benchmark harness itself, on the tiny index with the real cross-encoder (numbers are not asserted)."""

import json

import pytest

from cascade.bench.combine import combination_sweep
from cascade.bench.naive import naive_vs_cascade
from cascade.builder import open_cascade
from connectors.embedded import build_index
from tests.conftest import TINY_DOCS, tiny_config

QUERIES = {"q1": "solar electricity", "q2": "protein folding", "q3": "fish in the deep ocean"}
QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1}, "q3": {"d6": 1}}


@pytest.fixture
def ce_cascade(settings, models_dir):
    stages = [{"type": "cross_encoder", "name": "first", "model": "minilm-l6-ce-v1", "rerank": 4, "max_length": 64},
              {"type": "cross_encoder", "model": "minilm-l6-ce-v1", "rerank": 3, "max_length": 64,
               "combine": {"weights": {"cross_encoder": 1, "first": 1}}}]
    cfg = tiny_config(stages=stages)
    build_index(cfg, ((i + 1, dict(d)) for i, d in enumerate(TINY_DOCS)), settings, source="tiny")
    return open_cascade(cfg, settings)


def test_naive_vs_cascade_runs_both_arms_on_every_query(ce_cascade):
    res = naive_vs_cascade(ce_cascade, QUERIES, QRELS, naive_depth=100, depths=(2,), dataset="tiny", split="test")
    arms = res.arms
    assert set(arms) == {"naive", "cascade", "cascade@2"}
    for arm in arms.values():
        assert set(arm.run) == set(QRELS) and len(arm.ms) == 3
    # naive scores every BM25 hit (the corpus has 6 documents); the cascade's two cross-encoder stages score
    # 4 + 3, and the depth variant changes the first one: 2 + 3
    bm25_hits = [len(ce_cascade.retrievers["bm25"].search(ce_cascade.validate(__import__("cascade").Query(t)), 100))
                 for t in QUERIES.values()]
    assert arms["naive"].pairs == bm25_hits
    assert arms["cascade"].pairs == [7, 7, 7] and arms["cascade@2"].pairs == [5, 5, 5]
    s = arms["cascade"].summary(QRELS)
    assert set(s) == {"ndcg@10", "ce_pairs_per_query", "p50_ms", "p95_ms"} and 0 <= s["ndcg@10"] <= 1
    assert ce_cascade.stages[0].rerank == 4  # the depth override was undone
    json.dumps({k: a.summary(QRELS) for k, a in arms.items()})
    assert res.summary() == {k: a.summary(QRELS) for k, a in arms.items()} and json.dumps(res.as_json())
    assert "naive vs cascade, tiny test, 3 queries" in str(res.table().title)
    assert "| cascade@2 |" in res.markdown("cascade bench ...", "a machine")


def test_combination_sweep_lists_every_variant(ce_cascade):
    res = combination_sweep(ce_cascade, QUERIES, QRELS, depths=(2, 3), weights=((1, 0), (1, 1)),
                            norms=("zscore", "rank"), dataset="tiny", split="test")
    rows = res.rows
    assert rows[0]["depth"] == 0  # the previous stage alone
    assert [(r["depth"], r["normalize"], r["w_ce"], r["w_prev"]) for r in rows[1:]] == [
        (2, "-", 1, 0), (2, "zscore", 1, 1), (2, "rank", 1, 1), (3, "-", 1, 0), (3, "zscore", 1, 1), (3, "rank", 1, 1)]
    assert all(0 <= r["ndcg@10"] <= 1 for r in rows)
    assert res.previous == "first" and res.queries == 3  # combined with the stage before the last cross-encoder
    assert res.section() == ("combine-tiny", "Combining the cross-encoder with first (tiny test)")
    assert "| 0 | - | first alone |" in res.markdown("cascade bench-combine", "a machine")
