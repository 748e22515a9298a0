"""Experiments through the real service: a real uvicorn server, a real redis-server, a real tiny index.

A/B and interleaved searches, events in and counted once, orphans, partial batches, forced arms, the bounded
backlog, reloads, the report (HTTP and CLI), and the UBI export loaded into an OpenSearch-compatible server.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import yaml

from cascade.service import create_app
from cascade.service.registry import ConfigSource
from tests.service_fixtures import ServerThread, make_settings, redis_server, tiny_index_dir, wait_until, write_config  # noqa: F401

PROFILES = {"lexical": {"inherit": "default", "fusion": {"weights": {"knn": 0}}},
            "semantic": {"inherit": "default", "fusion": {"weights": {"bm25": 0}}}}
EXPERIMENTS = {
    "ab1": {"mode": "ab", "arms": ["default", "lexical"], "traffic": 0.4},
    "il1": {"mode": "interleave", "arms": ["lexical", "semantic"], "traffic": 0.3},
    "ml1": {"mode": "multileave", "arms": ["default", "lexical", "semantic"], "traffic": 0.3},
}
QUERY = "solar electricity storage"
KEY = "admin-secret"


def users_of(eid: str, n: int = 400) -> list[str]:
    """User ids the service will put in experiment ``eid`` (the same hash the service uses)."""
    from cascade.experiments.assignment import assign
    from cascade.experiments.config import ExperimentConfig

    exps = {k: ExperimentConfig(**v) for k, v in EXPERIMENTS.items()}
    out = []
    for i in range(n):
        a = assign("tiny", exps, unit=f"u:user{i}", unit_kind="user", query_text=QUERY)
        if a is not None and a.experiment == eid:
            out.append(f"user{i}")
    return out


@pytest.fixture
def served(tmp_path, tiny_index_dir, redis_server):
    write_config(tmp_path / "configs", profiles=PROFILES, experiments=EXPERIMENTS)
    settings = make_settings(tmp_path, tiny_index_dir, redis_url=redis_server.url, admin_api_key=KEY,
                             events_snapshot_every=5)
    with ServerThread(create_app(settings, ConfigSource(directory=tmp_path / "configs")), settings) as srv:
        client = httpx.Client(base_url=srv.url, timeout=30)
        wait_until(lambda: client.get("/readyz").status_code == 200, 120, what="readyz")
        yield client, redis_server, tmp_path
        client.close()


def search(client, user=None, **kw):
    body = {"query": QUERY, "size": 5, **kw}
    if user:
        body["user_id"] = user
    r = client.post("/v1/indexes/tiny/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def click(q, pos: int, **kw):
    return {"action_name": "click", "query_id": q["query_id"], "client_id": "c",
            "event_attributes": {"object": {"object_id": q["hits"][pos]["id"]}, "position": {"ordinal": pos + 1}}, **kw}


def report(client, eid, served=None, clicks=None):
    """The report once the consumer has applied what was sent."""
    def ready():
        r = client.get(f"/v1/experiments/{eid}").json()
        ok = served is None or r["served"] >= served
        if clicks is not None:
            got = sum((m["team_clicks"] if r["mode"] != "ab" else m["clicks"]) or 0 for m in r["arm_metrics"])
            ok = ok and got >= clicks
        return r if ok else None
    return wait_until(ready, 30, what=f"experiment {eid} to be counted")


def test_ab_users_stay_in_their_arm_and_see_that_profiles_ranking(served):
    client, _, _ = served
    users = users_of("ab1")[:12]
    arms = {}
    for u in users:
        a = search(client, u)
        assert a["experiment"]["id"] == "ab1" and a["experiment"]["mode"] == "ab" and a["query_id"]
        arm = a["experiment"]["arm"]
        arms[u] = arm
        again = search(client, u)
        assert again["experiment"]["arm"] == arm and again["query_id"] != a["query_id"]  # sticky; new query id
        direct = search(client, profile=arm)
        assert [h["id"] for h in a["hits"]] == [h["id"] for h in direct["hits"]] and a["profile"] == arm
        assert "experiment" not in direct or direct["experiment"] is None  # naming a profile opts out
    assert set(arms.values()) == {"default", "lexical"}


def test_interleaved_hits_carry_their_arm_and_clicks_credit_it(served):
    client, _, _ = served
    users = users_of("il1")[:10]
    wins = {"lexical": 0, "semantic": 0}
    events = []
    for u in users:
        r = search(client, u)
        assert r["experiment"]["mode"] == "interleave" and r["profile"] == "lexical+semantic"
        arms = [h["arm"] for h in r["hits"]]
        assert set(arms) <= {"lexical", "semantic"}
        lex, sem = (search(client, profile=p, size=5) for p in ("lexical", "semantic"))
        allowed = {h["id"] for h in lex["hits"]} | {h["id"] for h in sem["hits"]}
        assert {h["id"] for h in r["hits"]} <= allowed
        assert [h["score"] for h in r["hits"]] == sorted([h["score"] for h in r["hits"]], reverse=True)
        assert search(client, u)["hits"] == r["hits"]  # the same user and query: the same list
        events.append(click(r, 0))
        wins[arms[0]] += 1
    resp = client.post("/v1/events", json={"events": events})
    assert resp.status_code == 202 and resp.json()["accepted"] == len(events)
    rep = report(client, "il1", served=2 * len(users), clicks=len(users))
    pair = rep["pairs"][0]
    assert (pair["wins"], pair["losses"], pair["ties"]) == (wins["lexical"], wins["semantic"], 0)
    assert rep["served"] == 2 * len(users) and rep["arm_metrics"][0]["team_clicks"] == wins["lexical"]


def test_events_are_counted_once_orphans_kept_and_bad_ones_named(served):
    client, redis, _ = served
    u = users_of("ab1")[0]
    q = search(client, u)
    arm = q["experiment"]["arm"]
    ev = click(q, 1, timestamp="2026-12-02T10:00:00.000Z")
    batch = [ev, {"action_name": "click", "query_id": "never-served", "event_attributes": {"object": {"object_id": "d1"}}},
             {"action_name": "click", "query_id": q["query_id"]}, {"action_name": "impression"}]
    r = client.post("/v1/events", json=batch)
    assert r.status_code == 422
    body = r.json()
    assert body["accepted"] == 2 and body["error"]["field"] == "events.2.event_attributes.object.object_id"
    assert [x["field"] for x in body["rejected"]] == ["events.2.event_attributes.object.object_id",
                                                      "events.3.query_id"]
    again = client.post("/v1/events", json=[ev])  # the client retries the batch: the same event id
    assert again.status_code == 202 and again.json()["event_ids"] == body["event_ids"][:1]
    rep = report(client, "ab1", clicks=1)
    m = next(x for x in rep["arm_metrics"] if x["arm"] == arm)
    assert m["clicks"] == 1 and m["mrr"] > 0 and rep["orphans"]["events"] >= 1
    assert redis.client().xlen("cascade:events") >= 4  # the orphan is kept in the stream


def test_multileave_reports_every_pair(served):
    client, _, _ = served
    users = users_of("ml1")[:9]
    for u in users:
        r = search(client, u)
        assert r["experiment"]["mode"] == "multileave" and {h["arm"] for h in r["hits"]} <= set(EXPERIMENTS["ml1"]["arms"])
        client.post("/v1/events", json=[click(r, 0)]).raise_for_status()
    rep = report(client, "ml1", served=len(users), clicks=len(users))
    assert len(rep["pairs"]) == 3 and sum(p["wins"] + p["losses"] + p["ties"] for p in rep["pairs"]) == 3 * len(users)


def test_a_forced_arm_needs_the_admin_key_and_is_not_counted(served):
    client, _, _ = served
    r = client.post("/v1/indexes/tiny/search", json={"query": QUERY, "experiment": "il1", "arm": "semantic"})
    assert r.status_code == 401 and r.json()["error"]["field"] == "arm"
    r = client.post("/v1/indexes/tiny/search", json={"query": QUERY, "experiment": "il1", "arm": "nope"},
                    headers={"X-API-Key": KEY})
    assert r.status_code == 422 and "arms: lexical, semantic" in r.json()["error"]["message"]
    r = client.post("/v1/indexes/tiny/search", json={"query": QUERY, "experiment": "nope", "arm": "x"},
                    headers={"X-API-Key": KEY})
    assert r.status_code == 422 and r.json()["error"]["field"] == "experiment"
    before = client.get("/v1/experiments/il1").json()["served"]
    r = client.post("/v1/indexes/tiny/search", json={"query": QUERY, "experiment": "il1", "arm": "semantic"},
                    headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json()["experiment"]["forced"] is True and r.json()["profile"] == "semantic"
    client.post("/v1/events", json=[click(r.json(), 0)]).raise_for_status()
    time.sleep(1.5)
    assert client.get("/v1/experiments/il1").json()["served"] == before


def test_reload_changes_experiments(served):
    client, _, tmp = served
    path = tmp / "configs" / "tiny.yaml"
    data = yaml.safe_load(path.read_text())
    data["experiments"] = {"only": {"mode": "interleave", "arms": ["default", "semantic"]}}
    path.write_text(yaml.safe_dump(data))
    assert client.post("/v1/admin/reload", headers={"X-API-Key": KEY}).status_code == 200
    assert [e["id"] for e in client.get("/v1/experiments").json()["experiments"]] == ["only"]
    assert search(client, "anyone")["experiment"]["id"] == "only"
    assert client.get("/v1/experiments/ab1").status_code == 404


def test_report_cli_plot_and_ubi_export(served, monkeypatch, tmp_path, osmem_url):
    from typer.testing import CliRunner

    from cascade.cli import app
    from cascade.settings import get_settings

    client, redis, cfg_tmp = served
    for u in users_of("il1")[:6]:
        r = search(client, u)
        client.post("/v1/events", json=[click(r, 0), {"action_name": "impression", "query_id": r["query_id"],
                                                     "event_attributes": {"object": {"object_id": r["hits"][0]["id"]}}}]
                    ).raise_for_status()
    live = report(client, "il1", served=6, clicks=6)
    monkeypatch.setenv("CASCADE_REDIS_URL", redis.url)
    monkeypatch.setenv("CASCADE_CONFIG_DIR", str(cfg_tmp / "configs"))
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(app, ["experiments", "report", "il1", "--json", str(tmp_path / "r.json"),
                                       "--plot", str(tmp_path / "r.png")])
        assert res.exit_code == 0, res.output
        rep = json.loads((tmp_path / "r.json").read_text())
        assert rep["served"] == live["served"] and rep["pairs"][0]["wins"] == live["pairs"][0]["wins"]
        assert (tmp_path / "r.png").stat().st_size > 10_000
        res = CliRunner().invoke(app, ["experiments", "export-ubi", "--out", str(tmp_path / "ubi"), "--host", osmem_url])
        assert res.exit_code == 0, res.output
    finally:
        get_settings.cache_clear()
    queries = (tmp_path / "ubi" / "ubi_queries.ndjson").read_text().splitlines()
    events = (tmp_path / "ubi" / "ubi_events.ndjson").read_text().splitlines()
    q = json.loads(queries[1])
    assert q["query_response_hit_ids"] and q["user_query"] == QUERY and q["query_attributes"]["experiment"] == "il1"
    ev = json.loads(events[1])
    assert ev["action_name"] in ("click", "impression") and ev["user_query"] == QUERY
    assert ev["event_attributes"]["object"]["object_id"]
    with httpx.Client(base_url=osmem_url) as os_client:  # what Dashboards would query
        got = os_client.post("/ubi_events/_search", json={"query": {"term": {"action_name": "click"}}, "size": 0}).json()
        assert got["hits"]["total"]["value"] >= 6
        got = os_client.post("/ubi_queries/_search", json={"query": {"term": {"query_id": q["query_id"]}}}).json()
        assert got["hits"]["total"]["value"] == 1


@pytest.fixture
def osmem_url():
    osmem_server = pytest.importorskip("osmem_server", reason="osmem-server is not installed")
    server = osmem_server.OsmemServer.start(freeze=False, japanese=False)
    yield server.url
    server.close()


def test_a_full_backlog_is_a_503_and_nothing_is_stored(tmp_path, tiny_index_dir, redis_server):
    write_config(tmp_path / "configs", profiles=PROFILES, experiments=EXPERIMENTS)
    settings = make_settings(tmp_path, tiny_index_dir, redis_url=redis_server.url, events_consumer=False,
                             events_max_backlog=5, events_retention=1000)
    with ServerThread(create_app(settings, ConfigSource(directory=tmp_path / "configs")), settings) as srv:
        client = httpx.Client(base_url=srv.url, timeout=30)
        wait_until(lambda: client.get("/readyz").status_code == 200, 120, what="readyz")
        q = search(client, users_of("ab1")[0])  # one query record waits (no consumer)
        ok = client.post("/v1/events", json=[click(q, 0), click(q, 1)])
        assert ok.status_code == 202
        length = redis_server.client().xlen("cascade:events")
        full = client.post("/v1/events", json=[click(q, 2), click(q, 3), click(q, 4)])
        assert full.status_code == 503 and full.headers["Retry-After"] and full.json()["error"]["type"] == "backlog_full"
        assert redis_server.client().xlen("cascade:events") == length


def test_without_redis_searches_still_assign_and_events_say_why_not(tmp_path, tiny_index_dir):
    write_config(tmp_path / "configs", profiles=PROFILES, experiments=EXPERIMENTS)
    settings = make_settings(tmp_path, tiny_index_dir)
    with ServerThread(create_app(settings, ConfigSource(directory=tmp_path / "configs")), settings) as srv:
        client = httpx.Client(base_url=srv.url, timeout=30)
        wait_until(lambda: client.get("/readyz").status_code == 200, 120, what="readyz")
        q = search(client, users_of("il1")[0])
        assert q["experiment"]["id"] == "il1" and q["query_id"]
        r = client.post("/v1/events", json=[click(q, 0)])
        assert r.status_code == 503 and "CASCADE_REDIS_URL" in r.json()["error"]["message"]
        r = client.get("/v1/experiments/il1")
        assert r.status_code == 503
        assert client.get("/v1/experiments/zzz").status_code == 404


def test_a_replayed_batch_is_counted_once(redis_server):
    """The consumer's crash window: records applied but not acknowledged are applied again on restart."""
    from connectors.events import Consumer, EventLog, GROUP, STREAM, agg_key, read_aggregates

    async def main():
        log = EventLog(redis_server.url)
        await log.log_query({"query_id": "q1", "index": "i", "hits": ["a", "b"], "teams": [0, 1], "offset": 0,
                             "experiment": {"id": "e", "mode": "interleave", "arms": ["x", "y"], "fp": "f"}})
        await log.append_events([{"event_id": "e1", "action_name": "click", "query_id": "q1",
                                  "event_attributes": {"object": {"object_id": "b"}}}])
        c = Consumer(redis_server.url, name="c1", block_ms=100)
        got = await c.client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=10)
        entries = got[0][1]
        await c.apply(entries)
        await c.apply(entries)  # as if the first acknowledgement was lost in a crash
        agg = await read_aggregates(c.client, "i", "e", "f")
        await c.close()
        await log.close()
        return agg, c.stats

    agg, st = asyncio.run(main())
    assert agg["served"] == 1 and agg["clicks"] == 1 and agg["w:1:0"] == 1 and st.duplicates == 1
    assert agg_key("i", "e", "f") == "cascade:xagg:i:e:f"


@pytest.mark.parametrize("mode, arms", [("multileave", ["x", "y", "z"]), ("ab", ["x", "y"])])
def test_the_lua_aggregates_equal_a_recount_in_python(redis_server, mode, arms):
    """Random lists, random clicks (several per query, in any order, some on documents not shown): the
    consumer's incremental counts equal counting the same clicks per query afterwards."""
    import random

    from cascade.experiments.simulate import Tally
    from connectors.events import Consumer, EventLog, GROUP, STREAM, read_aggregates

    rng = random.Random(5)
    tally = Tally(len(arms), "interleave" if mode != "ab" else "ab")
    queries, events = [], []
    for q in range(120):
        hits = [f"d{i}" for i in rng.sample(range(30), 8)]
        teams = [rng.randrange(len(arms)) for _ in hits]
        arm = rng.randrange(len(arms))
        rec = {"query_id": f"q{q}", "index": "i", "hits": hits, "offset": 0,
               "experiment": {"id": "e", "mode": mode, "arms": arms, "fp": "f", "arm": arms[arm] if mode == "ab" else None}}
        if mode != "ab":
            rec["teams"] = teams
        queries.append(rec)
        clicked = sorted(rng.sample(range(8), rng.choice([0, 0, 1, 1, 2, 3])), key=lambda _: rng.random())
        tally.add(hits, teams if mode != "ab" else None, arm if mode == "ab" else None, clicked)
        events += [{"event_id": f"q{q}-{p}", "action_name": "click", "query_id": f"q{q}",
                    "event_attributes": {"object": {"object_id": hits[p]}}} for p in clicked]
        if rng.random() < 0.2:  # a click on something that was not shown: not credited
            events.append({"event_id": f"q{q}-x", "action_name": "click", "query_id": f"q{q}",
                           "event_attributes": {"object": {"object_id": "not-shown"}}})
    rng.shuffle(events)

    async def main():
        log = EventLog(redis_server.url)
        for rec in queries:
            await log.log_query(rec)
        await log.append_events(events)
        c = Consumer(redis_server.url, name="c", block_ms=100)
        while True:
            got = await c.client.xreadgroup(GROUP, "c", {STREAM: ">"}, count=50)
            if not got:
                break
            await c.apply(got[0][1])
        agg = await read_aggregates(c.client, "i", "e", "f")
        await c.close()
        await log.close()
        return agg

    agg = asyncio.run(main())
    if mode == "ab":
        for a, name in enumerate(arms):
            assert agg.get(f"served:{name}", 0) == tally.served[a]
            assert agg.get(f"clicks:{name}", 0) == tally.clicks[a]
            assert agg.get(f"clicks2:{name}", 0) == tally.squares[a]
        return
    for i in range(len(arms)):
        for j in range(i + 1, len(arms)):
            w, l, t = tally.pair(i, j)
            assert (agg.get(f"w:{i}:{j}", 0), agg.get(f"w:{j}:{i}", 0), agg.get(f"t:{i}:{j}", 0)) == (w, l, t), (i, j)
    assert [agg.get(f"teamclicks:{t}", 0) for t in range(len(arms))] == tally.clicks
    assert agg["clicked"] == tally.clicked and agg["unattributed"] > 0
