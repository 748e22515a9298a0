"""The stage contract holds: a stage type defined in one test-only file (tests/overlap_stage.py, registered by
one line) works in config validation, the service, overrides, metrics, explain, evaluation, cost accounting,
the pair-score cache and close, with no edit anywhere else."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

import tests.overlap_stage as overlap
from cascade.builder import open_index
from cascade.errors import ConfigError
from cascade.evaluation import evaluate_profiles
from cascade.query import Query
from cascade.service import create_app
from cascade.service.registry import ConfigSource
from connectors.score_cache import MemoryPairStore
from tests.conftest import tiny_config
from tests.service_fixtures import make_settings, redis_server, tiny_index_dir, wait_ready, write_config  # noqa: F401

STAGE = {"type": "test_overlap", "name": "overlap", "field": "title", "rerank": 6}
PROFILES = {"lite": {"inherit": "default", "stages": {"overlap": {"rerank": 3}}},
            "plain": {"inherit": "default", "stages": {"overlap": None}}}


def test_config_accepts_and_checks_the_registered_type():
    cfg = tiny_config(stages=[STAGE], profiles=PROFILES)
    assert cfg.stages[0].type == "test_overlap" and cfg.profile("lite").stages[0].rerank == 3
    assert cfg.profile("plain").stages == []
    with pytest.raises(ConfigError, match=r"tiny.yaml: stages.0.field: 'journal' is not a text field"):
        tiny_config(stages=[{**STAGE, "field": "journal"}])
    with pytest.raises(ConfigError, match=r"profiles.lite.stages.0.field: 'nope' is not a text field"):
        tiny_config(stages=[STAGE], profiles={"lite": {"inherit": "default", "stages": {"overlap": {"field": "nope"}}}})
    with pytest.raises(ConfigError, match=r"stages.0.type: unknown type 'test_nope'; expected one of .*test_overlap"):
        tiny_config(stages=[{"type": "test_nope"}])


async def test_builder_shares_models_across_profiles_and_closes_everything(tiny_index_dir, tmp_path):
    settings = make_settings(tmp_path, tiny_index_dir)
    cfg = tiny_config(stages=[STAGE], profiles=PROFILES, cache={"pair_scores": True})
    store = MemoryPairStore(1000)
    opened = open_index(cfg, settings, pair_store=store)
    assert sorted(opened.profiles) == ["default", "lite", "plain"]
    d, lite = opened.cascade("default"), opened.cascade("lite")
    assert d.retrievers is lite.retrievers and d.documents is lite.documents  # one backend
    assert d.stages[0].scorer is lite.stages[0].scorer  # one loaded model, one cache namespace
    runtime = d.stages[0].scorer.inner.runtime
    res = await d.search(Query("solar panels rooftops", size=3))
    assert res.cost() == {"calls": 6} and res.traces[-1].cost_unit == "calls"
    seen = runtime.pairs
    await lite.search(Query("solar panels rooftops", size=3))
    assert runtime.pairs == seen  # the other profile's pairs came from the shared pair-score cache
    assert "overlap" in [p["name"] for p in d.plan()] and d.plan()[-1]["cost_unit"] == "calls"
    await opened.close()
    assert overlap.CLOSED.count("overlap") >= 1 and opened.closed


async def test_overrides_prefix_and_evaluation_count_its_cost(tiny_index_dir, tmp_path):
    settings = make_settings(tmp_path, tiny_index_dir)
    opened = open_index(tiny_config(stages=[STAGE], profiles=PROFILES), settings)
    casc = opened.cascade()
    res = await casc.with_overrides({"overlap": {"rerank": 2}}).search(Query("solar panels", size=3))
    assert res.traces[-1].scored == 2 and res.cost() == {"calls": 2}
    assert casc.prefix(0).stages == [] and len(casc.stages) == 1  # a view: the cascade itself is unchanged
    queries = {"q1": "solar panels", "q2": "wind turbines"}
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    reps = await evaluate_profiles([opened.cascade(p) for p in ("default", "lite", "plain")], queries, qrels,
                                   dataset="tiny", split="test")
    assert [r.profile for r in reps] == ["default", "lite", "plain"]
    by = {r.profile: {s.name: s for s in r.stages} for r in reps}
    assert by["default"]["overlap"].cost_per_query == {"calls": 6.0}
    assert by["lite"]["overlap"].cost_per_query == {"calls": 3.0} and "overlap" not in by["plain"]
    assert by["default"]["bm25"].ndcg_10 == by["lite"]["bm25"].ndcg_10  # the same retrieval for every profile
    for r in by.values():  # cumulative times include the shared retrieval, for every profile
        assert r["fusion"].p50_ms >= max(r["bm25"].p50_ms, r["knn"].p50_ms)
        assert all(s.p50_ms >= r["fusion"].p50_ms for n, s in r.items() if n not in ("bm25", "knn", "fusion"))
    await opened.close()


def test_service_serves_its_profiles_with_metrics_explain_and_overrides(tiny_index_dir, tmp_path):
    folder = tmp_path / "configs"
    write_config(folder, "tiny", stages=[STAGE], profiles=PROFILES)
    app = create_app(make_settings(tmp_path, tiny_index_dir), ConfigSource(directory=folder))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        url = "/v1/indexes/tiny/search"
        r = client.post(url, json={"query": "solar panels", "size": 3, "explain": True})
        assert r.status_code == 200, r.text
        body = r.json()
        step = next(t for t in body["trace"] if t["name"] == "overlap")
        assert body["profile"] == "default" and step["kind"] == "test_overlap" and step["cost_unit"] == "calls"
        assert "overlap" in body["hits"][0]["stages"]
        lite = client.post(url, json={"query": "solar panels", "size": 3, "explain": True, "profile": "lite"}).json()
        assert lite["profile"] == "lite" and next(t for t in lite["trace"] if t["name"] == "overlap")["scored"] == 3
        ov = client.post(url, json={"query": "solar panels", "overrides": {"overlap": {"rerank": 2}}, "explain": True})
        assert next(t for t in ov.json()["trace"] if t["name"] == "overlap")["scored"] == 2
        too = client.post(url, json={"query": "solar panels", "overrides": {"overlap": {"rerank": 7}}})
        assert too.status_code == 422 and too.json()["error"]["field"] == "overrides.overlap.rerank"
        bad = client.post(url, json={"query": "solar panels", "profile": "nope"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "profile"
        assert "default, lite, plain" in bad.json()["error"]["message"]
        desc = client.get("/v1/indexes/tiny/cascade").json()
        assert sorted(desc["profiles"]) == ["default", "lite", "plain"]
        assert desc["profiles"]["lite"]["overrides"]["overlap"] == {"keep": 10, "rerank": 3}
        assert desc["profiles"]["lite"]["fingerprint"] != desc["profiles"]["default"]["fingerprint"]
        metrics = client.get("/metrics").text
        assert 'cascade_stage_cost_total{index="tiny",profile="default",stage="overlap",unit="calls"}' in metrics
        assert 'cascade_stage_cost_total{index="tiny",profile="lite",stage="overlap",unit="calls"} 3.0' in metrics
        # Cache keys name the profile: the same query under another profile is a miss, not the other's answer.
        again = client.post(url, json={"query": "solar panels", "size": 3, "explain": True, "profile": "lite"})
        assert again.json()["cache"] == "hit" and again.json()["profile"] == "lite"


def test_the_shipped_scifact_config_has_profiles_sharing_one_cross_encoder(models_dir, tiny_index_dir, tmp_path):
    from cascade.config import load_config

    cfg = load_config("scifact", None)
    assert cfg.profile_names() == ["default", "ce-deep", "ce", "ltr", "fusion", "lexical", "semantic"]
    assert [s.rerank for s in cfg.profile("ce-deep").stages] == [None, 30]
    assert [s.type for s in cfg.profile("ltr").stages] == ["ltr"] and cfg.profile("fusion").stages == []
    assert cfg.profile("lexical").fusion.weights == {"knn": 0} and cfg.profile("semantic").fusion.weights == {"bm25": 0}
    # Two profiles naming the same model load it once (on the tiny index: the same stage shapes).
    ce = {"type": "cross_encoder", "model": "minilm-l6-ce-v1", "rerank": 3, "max_length": 64}
    tiny = tiny_config(stages=[ce], profiles={"deep": {"inherit": "default", "stages": {"cross_encoder": {"rerank": 5}}}})
    opened = open_index(tiny, make_settings(tmp_path, tiny_index_dir, models_dir=models_dir))
    a, b = opened.cascade("default").stages[0], opened.cascade("deep").stages[0]
    assert a is not b and a.rerank == 3 and b.rerank == 5 and a.scorer is b.scorer
    res = asyncio.run(opened.cascade("deep").search(Query("solar electricity", size=3)))
    assert res.cost() == {"pairs": 5} and res.profile == "deep"


def test_cli_evaluation_can_cache_pair_scores_like_the_service(tiny_index_dir, tmp_path, monkeypatch):
    """`cascade eval --pair-cache` opens the index with an in-process pair store, as the service has one."""
    import yaml

    import cascade.cli.common as common
    from cascade.models.scorers import CachedPairScorer

    settings = make_settings(tmp_path, tiny_index_dir)
    monkeypatch.setattr(common, "_settings", lambda: settings)
    path = write_config(tmp_path / "cfg", "tiny", stages=[STAGE], cache={"pair_scores": True})
    assert yaml.safe_load(path.read_text())["cache"]["pair_scores"] is True
    cached = common._open("tiny", path, pair_cache=True).cascade()
    plain = common._open("tiny", path).cascade()
    assert isinstance(cached.stages[0].scorer, CachedPairScorer)
    assert not isinstance(plain.stages[0].scorer, CachedPairScorer)  # off by default: every pair is scored


def test_service_pair_scores_in_redis_are_shared_by_profiles(tiny_index_dir, tmp_path, redis_server):
    """The service's pair-score store (redis-py asyncio) sits in front of the stage's scorer: a second profile
    asking for the same pairs is answered from Redis, and Redis holds only finite scores under the model stamp."""
    folder = tmp_path / "configs"
    write_config(folder, "tiny", stages=[STAGE], profiles=PROFILES, cache={"pair_scores": True})
    app = create_app(make_settings(tmp_path, tiny_index_dir, redis_url=redis_server.url), ConfigSource(directory=folder))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        url = "/v1/indexes/tiny/search"

        def pairs(result: str) -> float:
            for line in client.get("/metrics").text.splitlines():
                if line.startswith(f'cascade_pair_score_cache_total{{index="tiny",result="{result}"}}'):
                    return float(line.split()[-1])
            return 0.0

        assert client.post(url, json={"query": "solar panels rooftops", "size": 3}).status_code == 200
        hits, misses = pairs("hit"), pairs("miss")
        assert client.post(url, json={"query": "solar panels rooftops", "size": 3, "profile": "lite"}).status_code == 200
        assert pairs("hit") == hits + 3 and pairs("miss") == misses  # lite's 3 pairs all came from Redis
        assert len(redis_server.client().keys("cascade:pair:*")) >= 6
