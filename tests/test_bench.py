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


@pytest.fixture
def ce_index(settings, models_dir):
    """The tiny corpus built with a cross-encoder stage in its config (what `cascade serve` is given)."""
    cfg = tiny_config(stages=[{"type": "cross_encoder", "model": "minilm-l6-ce-v1", "rerank": 6, "max_length": 64}])
    build_index(cfg, ((i + 1, dict(d)) for i, d in enumerate(TINY_DOCS)), settings, source="tiny")
    return cfg, settings


def test_overload_run_adds_up_and_sheds(ce_index, tmp_path):
    from rich.console import Console

    from cascade.bench import overload

    cfg, settings = ce_index
    cfg = overload.cheap_config(cfg, with_cross_encoder=True)
    assert not cfg.cache.enabled and not cfg.cache.pair_scores and len(cfg.stages) == 1
    # One slot and two queue places, so that 8 clients really overflow a tiny index; A turns away anything that
    # would wait at all, B (the old behaviour) only what finds the queue full.
    policies = [overload.Policy("A", "admission", 1, 2, 0.001), overload.Policy("B", "queue only", 1, 2, 3600)]
    assert policies[1].env()["CASCADE_MAX_QUEUE_WAIT_S"] == "3600"
    r = overload.run(cfg, settings, [*QUERIES.values(), "solar batteries", "wind farms", "gene cells"],
                     clients=[4, 8], duration_s=2, policies=policies, alone=2)
    assert [(x.policy, x.clients) for x in r.levels] == [("A", 4), ("A", 8), ("B", 4), ("B", 8)]
    assert r.queries == 6 and len(r.alone_ms["A"]) == len(r.alone_took_ms["B"]) == 2
    for x in r.levels:
        assert x.requests == x.ok + x.rejected + x.errors and x.requests > 0 and x.ok > 0
        assert x.rejected == x.rejected_wait + x.rejected_full == len(x.retry_after_s)
        assert 0 <= x.rejected_share <= 1 and x.rejected_share == pytest.approx(x.rejected / x.requests)
        assert x.server_rejected == x.rejected  # the service counted the same 503s
        assert x.errors == 0 and x.wall_s >= 2 and x.ok_per_s == pytest.approx(x.ok / x.wall_s)
        assert all(s >= 1 for s in x.retry_after_s)  # whole seconds, at least 1
    a, b = [r.level(p, 8) for p in ("A", "B")]
    assert a.rejected_full == 0 and a.rejected_wait > 0  # nobody queues under A, so the queue is never full
    assert b.rejected_wait == 0 and b.rejected_full > 0  # B turns away only beyond the queue bound
    text = r.markdown("cascade bench-overload --clients 4 --clients 8", "a machine", image="img/overload.png")
    assert "Command: `cascade bench-overload --clients 4 --clients 8`" in text
    assert f"| A | 8 | {a.requests} | {a.ok} | {a.rejected} |" in text and "![p99 latency" in text
    assert "CASCADE_MAX_QUEUE_WAIT_S=3600" in text and "`cache.enabled: false`" in text
    assert r.section() == ("overload-tiny", "HTTP service under overload: admission (503 + Retry-After) "
                                            "against queueing")
    con = Console(width=80, record=True)
    for t in r.tables():
        con.print(t)
    shown = con.export_text()
    assert "…" not in shown and max(len(line) for line in shown.splitlines()) <= 80
    assert overload.plot(r, tmp_path / "overload.png").stat().st_size > 0


def test_os_features_run_pairs_the_backends_and_adds_up(tiny_index, tmp_path):
    pytest.importorskip("osmem_server", reason="osmem-server is not installed (pip install -e '.[dev]')")
    pytest.importorskip("opensearchpy", reason="opensearch-py is not installed")
    from rich.console import Console

    from cascade.bench import os_features
    from cascade.bench.common import pct
    from tests.conftest import write_corpus

    cfg, settings = tiny_index
    texts = list(QUERIES.values())
    done = []
    r = os_features.run(cfg, settings, write_corpus(tmp_path / "tiny.jsonl"), texts, candidates=[3, 5, 3],
                        dataset="tiny", split="test", on_progress=lambda d, t: done.append((d, t)))
    assert done[-1] == (12, 12) and r.docs == len(TINY_DOCS) and r.queries == 3
    assert r.levels == [(3, "cold"), (3, "warm"), (5, "cold"), (5, "warm")]
    assert [(a.candidates, a.df, a.backend) for a in r.arms][:4] == [
        (3, "cold", "osmem"), (3, "cold", "embedded"), (3, "warm", "osmem"), (3, "warm", "embedded")]
    assert r.keyword_fields == ["title", "text"] and r.features > 10
    for a in r.arms:
        assert len(a.features_ms) == len(a.retrieval_ms) == len(a.sizes) == 3 and a.errors == 0
        assert all(0 < s <= a.candidates for s in a.sizes) and all(f > 0 for f in a.features_ms)
        assert len(a.keyword_ms) == (3 if a.backend == "osmem" else 0)
    for n, df in r.levels:
        o, e = r.arm("osmem", n, df), r.arm("embedded", n, df)
        assert r.step_diff(n, df) == pytest.approx([a - b for a, b in zip(o.features_ms, e.features_ms)])
        assert all(0 < k <= f for k, f in zip(o.keyword_ms, o.features_ms))  # the round trip is inside the step
        assert r.beyond_round_trip(n, df) == pytest.approx([f - k for f, k in zip(o.features_ms, o.keyword_ms)])
        # 2 fields x (scoring + matching), plus one count per new word and field on the cold pass only
        assert all(s == 4 + c for s, c in zip(o.subsearches, o.counts))
        assert (sum(o.counts) > 0) == (df == "cold")
    text = r.markdown("cascade bench-os-features --candidates 3 --candidates 5", "a machine")
    assert "Command: `cascade bench-os-features --candidates 3 --candidates 5`" in text
    o = r.arm("osmem", 5, "warm")
    assert f"| 5 | warm | **{pct(o.keyword_ms, 50):.1f}** | **{pct(o.keyword_ms, 95):.1f}** |" in text
    assert r.section() == ("os-features-tiny", "OpenSearch keyword features: the feature round trip against osmem")
    con = Console(width=80, record=True)
    for t in r.tables():
        con.print(t)
    shown = con.export_text()
    assert "…" not in shown and max(len(line) for line in shown.splitlines()) <= 80
    assert r.table().title == r.tables()[-1].title
