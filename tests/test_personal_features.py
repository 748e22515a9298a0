"""Popularity and personalized features end to end: a real service and redis-server, users searching with a
segment, clicks as UBI events, the behaviour consumer, point-in-time replay, an LTR model trained on the replayed
log and served, anonymous users and a Redis outage."""

from __future__ import annotations

import asyncio
import math

import httpx
import numpy as np
import pytest

from cascade.service import create_app
from cascade.service.registry import ConfigSource
from tests.service_fixtures import ServerThread, make_settings, redis_server, tiny_index_dir, wait_until, write_config  # noqa: F401

FEATURES = {"keyword": {}, "retrieval": True, "semantic": True, "query": True,
            "popularity": {"half_lives_days": [1.0], "prior": 4},
            "personal": {"field": "journal", "segment": "segment", "prior": 2}}
QUERY = "cells electricity storage"
TASTE = {"alice": ("bio", "Biology"), "bob": ("energy", "Energy")}
SHOWN = ["d3", "d1", "d6", "d2", "d4", "d5"]  # d3 Biology, d1 Energy first


def _search(client, user=None, segment=None, **kw):
    body = {"query": QUERY, "size": 6, **kw}
    if user:
        body["user_id"] = user
    if segment:
        body["user_attributes"] = {"segment": segment}
    r = client.post("/v1/indexes/tiny/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _click(client, body, user, doc):
    ev = {"action_name": "click", "query_id": body["query_id"], "client_id": user,
          "event_attributes": {"object": {"object_id": doc}}}
    assert client.post("/v1/events", json={"events": [ev]}).status_code == 202


def _consumer(cfg, settings, url):
    from cascade.builder import open_index
    from features.personal import BehaviorConsumer, DocValues

    opened = open_index(cfg, settings, profiles=[], stages=False)
    ft = cfg.features
    return opened, BehaviorConsumer("tiny", url, ft.popularity, ft.personal,
                                    DocValues(opened.backend.fetch, ft.personal.field))


@pytest.fixture
def served(tmp_path, tiny_index_dir, redis_server):
    write_config(tmp_path / "configs", features=FEATURES)
    settings = make_settings(tmp_path, tiny_index_dir, redis_url=redis_server.url, events_log_queries="all",
                             admin_api_key="k")
    with ServerThread(create_app(settings, ConfigSource(directory=tmp_path / "configs")), settings) as srv:
        client = httpx.Client(base_url=srv.url, timeout=30)
        wait_until(lambda: client.get("/readyz").status_code == 200, 120, what="readyz")
        yield client, settings, tmp_path
        client.close()


def test_personal_field_must_be_a_keyword_field(tiny_index):
    from cascade.builder import open_index
    from cascade.errors import ConfigError
    from tests.conftest import tiny_config

    cfg, settings = tiny_index
    bad = tiny_config(features={**FEATURES, "personal": {"field": "title"}})
    with pytest.raises(ConfigError, match="features.personal.field.*keyword field.*journal"):
        open_index(bad, settings, stages=False)


def test_defaults_without_history_are_defined():
    from features.config import PersonalFeatures, PopularityFeatures
    from features.personal import personal_features, popularity_features

    pop = popularity_features([None, None], None, 1e9, PopularityFeatures())
    assert np.isfinite(pop).all() and (pop == 0).all()  # nothing logged yet: CTR prior 0, no impressions
    glob = {"_n": "0.0,10.0", "Biology": "0.0,8.0", "Energy": "0.0,2.0"}
    x = personal_features([["Biology"], ["Energy"], [""]], None, None, glob, 0.0, PersonalFeatures(field="journal"))
    assert np.isfinite(x).all()
    assert x[0, 0] > x[1, 0]  # index-wide share
    assert (x[:, 1] == x[:, 0]).all() and (x[:, 2] == 0).all() and (x[:, 3] == 0).all()  # no user: the prior


def test_behaviour_features_end_to_end(served, redis_server):
    from cascade.config import load_config
    from connectors.events import connect, iterate
    from features.personal import PERSONAL_NAMES, BehaviorGroup, replay
    from features.training.ltr import train_ltr

    client, settings, tmp = served
    cfg = load_config("tiny", settings.config_dir)
    # Traffic: each user clicks the best-ranked document of the journal their segment likes.
    clicks = {u: [] for u in TASTE}
    for rnd in range(5):
        for user, (segment, journal) in TASTE.items():
            body = _search(client, user, segment)
            doc = next(h["id"] for h in body["hits"] if journal in str(h["fields"].get("journal")))
            _click(client, body, user, doc)
            clicks[user].append(doc)
        _search(client)  # an anonymous search: impressions, no click
    opened, consumer = _consumer(cfg, settings, redis_server.url)

    async def aggregate_and_read():
        try:
            applied = await consumer.drain()
            group = BehaviorGroup("tiny", cfg.features.popularity, cfg.features.personal, lambda: redis_server.url)
            casc = opened.backend
            from cascade.candidates import Candidates
            from cascade.query import Query

            cands = Candidates(ids=SHOWN, fields=await casc.fetch(SHOWN), score=np.zeros(len(SHOWN)))
            out = {}
            for who, attrs in (("alice", {"segment": "bio"}), ("bob", {"segment": "energy"}), (None, {}),
                               ("carol", {}), ("dave", {"segment": "bio"})):
                memo, parts = await group.prefetch(Query(text=QUERY, user_id=who, user_attributes=attrs), cands)
                assert parts[0][2] is None
                from features.context import FeatureContext

                out[who] = group.compute(FeatureContext(Query(text=QUERY), cands, None, memo))
            return applied, group.names(), out
        finally:
            await consumer.close()

    applied, names, feats = asyncio.run(aggregate_and_read())
    assert applied == 5 * 3 + 10 and consumer.applied["clicks"] == 10 and consumer.applied["searches"] == 15
    col = {n: i for i, n in enumerate(names)}
    lift, aff = col["pers.user.lift"], col["pers.user.affinity"]
    alice, bob, anon = feats["alice"], feats["bob"], feats[None]
    assert alice[0, lift] > 0 and alice[1, lift] < 0  # d3 Biology, d1 Energy
    assert bob[1, lift] > 0 and bob[0, lift] < 0
    assert (anon[:, lift] == 0).all() and (anon[:, aff] == anon[:, col["pers.global.share"]]).all()
    pers = [col[n] for n in PERSONAL_NAMES]  # (counts decay between the two reads)
    assert np.allclose(feats["carol"][:, pers], anon[:, pers], rtol=1e-6)  # an unknown user: the same defined values
    seg = col["pers.segment.lift"]  # dave: no history of his own, but his segment's
    assert feats["dave"][0, seg] > 0 and feats["dave"][0, lift] == 0
    ctr = col["pop.all.ctr"]
    hit = {d for c in clicks.values() for d in c}
    assert min(alice[i, ctr] for i, d in enumerate(SHOWN) if d in hit) > \
        max(alice[i, ctr] for i, d in enumerate(SHOWN) if d not in hit)

    # Point in time: replaying the stream gives each search the state just before it; the end state is Redis's.
    seen: list[tuple[str, float]] = []
    group = BehaviorGroup("tiny", cfg.features.popularity, cfg.features.personal, lambda: redis_server.url)

    def on_search(rec, agg):
        if rec.get("user_id") == "alice":
            x = group.from_snapshot(agg.snapshot(["d3"], "u:alice", "s:bio", 0.0 + _t(rec)), [{"journal": "Biology"}])
            seen.append((rec["query_id"], x[0, group.names().index("pers.user.log_clicks")]))

    async def replayed():
        c = connect(redis_server.url)
        try:
            from features.personal import DocValues

            agg = await replay(iterate(c), group, DocValues(opened.backend.fetch, "journal"), on_search)
            stored = {k.decode(): v.decode() for k, v in (await c.hgetall("cascade:bh:tiny:doc")).items()}
            return agg, stored
        finally:
            await c.aclose()

    agg, stored = asyncio.run(replayed())
    assert [round(v, 6) for _, v in seen] == [round(math.log1p(k), 6) for k in range(5)]  # 0, 1, 2, ... clicks before
    assert {d: agg.docs[d] for d in stored} == stored  # the consumer and the replay run the same code

    # Train on the replayed log (labels: the searches' own clicks), serve the model, search as three users.
    from typer.testing import CliRunner

    from cascade.cli import app
    from cascade.settings import get_settings
    from features.training.ltr import load_logs

    env = {"CASCADE_REDIS_URL": redis_server.url, "CASCADE_INDEX_DIR": str(settings.index_dir),
           "CASCADE_CONFIG_DIR": str(settings.config_dir), "CASCADE_CACHE_DIR": str(tmp / "cache")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        get_settings.cache_clear()
        res = CliRunner().invoke(app, ["features", "log-impressions", "--index", "tiny", "--clicks",
                                       "--out", str(tmp / "imp.parquet")])
        get_settings.cache_clear()
    assert res.exit_code == 0, res.output
    log = load_logs([tmp / "imp.parquet"])
    qids = set(log.qids)
    # Each search with history (all but alice's and bob's first) also as an anonymous one, labels included.
    assert len(qids) == 15 + 8 and sum(q.endswith("#anonymous") for q in qids) == 8
    assert int((log.labels > 0).sum()) == 10 + 8
    copy = log.x[np.char.endswith(log.qids.astype(str), "#anonymous")]
    assert (copy[:, log.names.index("pers.user.lift")] == 0).all()
    res = train_ltr([tmp / "imp.parquet"], tmp / "ltr-personal", valid_fraction=0.0, rounds=30,
                    params={"min_data_in_leaf": 2, "min_data_in_bin": 1})
    assert res.best_iteration >= 1 and res.params["interaction_constraints"]  # personalization is additive
    write_config(tmp / "configs", features=FEATURES,
                 stages=[{"type": "ltr", "model": str(tmp / "ltr-personal"), "keep": 6}])
    assert client.post("/v1/admin/reload", headers={"X-API-Key": "k"}).status_code == 200
    a = _search(client, "alice", "bio", explain=True)
    b = _search(client, "bob", "energy", explain=True)
    n = _search(client, explain=True)
    fa = {h["id"]: h["features"] for h in a["hits"]}
    fb = {h["id"]: h["features"] for h in b["hits"]}
    assert fa["d3"]["pers.user.lift"] > 0 > fb["d3"]["pers.user.lift"]  # not one cached answer for both
    d = {h["id"]: h["features"] for h in _search(client, "dave", "bio", explain=True)["hits"]}
    assert d["d3"]["pers.segment.lift"] > 0 > d["d1"]["pers.segment.lift"] and d["d3"]["pers.user.lift"] == 0
    assert all(h["features"]["pers.user.lift"] == 0 for h in n["hits"])
    assert set(PERSONAL_NAMES) <= set(n["hits"][0]["features"])

    # Redis gone: the search still answers, behaviour features at their defaults, the trace says why.
    redis_server.stop()
    r = client.post("/v1/indexes/tiny/search", json={"query": QUERY, "user_id": "alice", "explain": True,
                                                     "user_attributes": {"segment": "bio"}})
    assert r.status_code == 200
    step = next(t for t in r.json()["trace"] if t["name"] == "behavior_features")
    assert step["error"]
    assert all(h["features"]["pers.user.lift"] == 0 for h in r.json()["hits"])
    asyncio.run(opened.close())


def _t(rec) -> float:
    from features.personal import epoch

    return epoch(rec.get("timestamp"))
