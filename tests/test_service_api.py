"""The HTTP API through FastAPI's test client (ASGI, no sockets): shapes, validation, overrides, reload, failures.

The cascade is real (tantivy + faiss over MiniLM embeddings of the tiny
corpus); the cache is the in-process LRU (no CASCADE_REDIS_URL). Redis, real
sockets and the `cascade serve` process are in test_service_http.py.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cascade.service import create_app
from cascade.service.registry import ConfigSource
from tests.service_fixtures import (  # noqa: F401  (fixtures)
    FailingStage, LengthStage, SlowSearch, make_settings, tiny_index_dir, wait_ready, write_config,
)

SEARCH = "/v1/indexes/tiny/search"


@pytest.fixture
def make_client(tmp_path, tiny_index_dir):
    """A running app (lifespan started, indexes opened) over a config folder with the tiny index."""
    made = []

    def make(configs: dict[str, dict] | None = None, **settings_kw) -> TestClient:
        folder = tmp_path / "configs"
        for name, changes in (configs or {"tiny": {}}).items():
            write_config(folder, name, **changes)
        app = create_app(make_settings(tmp_path, tiny_index_dir, **settings_kw), ConfigSource(directory=folder))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        made.append(client)
        wait_ready(client)
        return client

    yield make
    for c in made:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def service(client: TestClient):
    return client.app.state.service


def test_search_miss_then_hit_with_the_documented_shape(client):
    r = client.post(SEARCH, json={"query": "photovoltaic sunlight", "size": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"index", "profile", "config_version", "hits", "total", "degraded", "cache", "request_id",
                         "took_ms", "query_id"}
    assert body["index"] == "tiny" and body["config_version"] == "1" and body["cache"] == "miss"
    assert body["profile"] == "default"
    assert body["hits"][0]["id"] == "d1" and len(body["hits"]) == 2 and body["degraded"] == []
    assert body["hits"][0]["fields"]["title"] == "Solar panels on rooftops"
    assert r.headers["x-request-id"] == body["request_id"]

    again = client.post(SEARCH, json={"query": "photovoltaic sunlight", "size": 2}, headers={"X-Request-ID": "abc-123"})
    b2 = again.json()
    assert b2["cache"] == "hit" and b2["hits"] == body["hits"] and b2["request_id"] == "abc-123"
    # Paging is part of the key: the next page is computed, not cut from the first.
    p2 = client.post(SEARCH, json={"query": "photovoltaic sunlight", "size": 2, "from": 2}).json()
    assert p2["cache"] == "miss" and [h["id"] for h in p2["hits"]] != [h["id"] for h in body["hits"]]


def test_explain_gives_trace_provenance_and_stage_scores(client):
    service(client).registry.entries["tiny"].cascade.stages.append(LengthStage())
    r = client.post(SEARCH, json={"query": "solar electricity", "size": 3, "explain": True})
    body = r.json()
    assert [t["name"] for t in body["trace"]] == ["bm25", "knn", "fusion", "length"]
    length = body["trace"][-1]
    assert length["kind"] == "length" and length["n_out"] == 4 and length["scored"] == 5 and length["ms"] >= 0
    assert len(length["top"]) == 3  # as deep as the page asked for
    hit = body["hits"][0]
    assert set(hit["retrievers"]) <= {"bm25", "knn"} and hit["retrievers"]
    assert all(set(v) == {"score", "rank"} for v in hit["retrievers"].values())
    assert "length" in hit["stages"] and "fusion" in hit["stages"]
    plain = client.post(SEARCH, json={"query": "solar electricity", "size": 3}).json()
    assert "trace" not in plain and "retrievers" not in plain["hits"][0]
    assert plain["cache"] == "miss"  # explain is part of the key


def test_equivalent_requests_share_one_cache_entry(client):
    a = client.post(SEARCH, json={"query": "  solar\n electricity ", "filters": {"journal": "Energy"}}).json()
    b = client.post(SEARCH, json={"query": "solar electricity", "filters": {"journal": ["Energy"]},
                                  "user_id": "u1", "session_id": "s1"}).json()
    assert a["cache"] == "miss" and b["cache"] == "hit" and a["hits"] == b["hits"]
    assert all("Energy" in (h["fields"]["journal"] if isinstance(h["fields"]["journal"], list) else [h["fields"]["journal"]])
               for h in a["hits"])
    c = client.post(SEARCH, json={"query": "solar electricity", "filters": {"journal": ["Energy", "Biology"]}}).json()
    assert c["cache"] == "miss"


@pytest.mark.parametrize("body,field,message,limit", [
    ({}, "query", "required", None),
    ({"query": ""}, "query", "empty", None),
    ({"query": "  \n "}, "query", "empty", None),
    ({"query": "x" * 2049}, "query", "the limit of index tiny is 2048", 2048),
    ({"query": 5}, "query", "valid string", None),
    ({"query": "x", "size": 0}, "size", "greater than or equal to 1", 1),
    ({"query": "x", "size": 101}, "size", "between 1 and 100", 100),
    ({"query": "x", "size": 10_001}, "size", "less than or equal to 10000", 10_000),
    ({"query": "x", "size": "5"}, "size", "valid integer", None),
    ({"query": "x", "size": True}, "size", "valid integer", None),
    ({"query": "x", "from": -1}, "from", "greater than or equal to 0", 0),
    ({"query": "x", "from": 95, "size": 10}, "from", "from + size must be at most 100", 100),
    ({"query": "x", "filters": {"colour": "red"}}, "filters.colour", "unknown field; filterable fields", None),
    ({"query": "x", "filters": {"title": "x"}}, "filters.title", "text fields cannot be filtered", None),
    ({"query": "x", "filters": {"year": "abc"}}, "filters.year", "expected a number", None),
    ({"query": "x", "filters": {"year": 1.5}}, "filters.year", "expected an integer", None),
    ({"query": "x", "filters": {"year": 2 ** 64}}, "filters.year", "64-bit", None),
    ({"query": "x", "filters": {"year": {"between": [1, 2]}}}, "filters.year", "range filters take gt, gte, lt, lte", None),
    ({"query": "x", "filters": {"year": None}}, "filters.year", "expected a string, a number", None),
    ({"query": "x", "filters": {"year": []}}, "filters.year", "empty list", None),
    ({"query": "x", "filters": {"journal": {"gte": "a"}}}, "filters.journal", "numeric or date", None),
    ({"query": "x", "filters": {"published": "yesterday"}}, "filters.published", "expected a date", None),
    # A date term no index can hold matches nothing: refused (a range bound there is moved to the edge instead).
    ({"query": "x", "filters": {"published": "1500-01-01"}}, "filters.published", "outside 1677-09-22", None),
    ({"query": "x", "filters": "year=2020"}, "filters", "should be an object", None),
    ({"query": "x", "overrides": {"fusion": {"keep": 11}}}, "overrides.fusion.keep", "at most 10", 10),
    ({"query": "x", "overrides": {"fusion": {"keep": 0}}}, "overrides.fusion.keep", "greater than or equal to 1", 1),
    ({"query": "x", "overrides": {"fusion": {"rerank": 5}}}, "overrides.fusion.rerank", "no rerank", None),
    ({"query": "x", "overrides": {"ce": {"keep": 5}}}, "overrides.ce", "no step named 'ce'", None),
    ({"query": "x", "overrides": {"fusion": {"depth": 5}}}, "overrides.fusion.depth", "unknown key", None),
    ({"query": "x", "explain": "yes"}, "explain", "valid boolean", None),
    ({"query": "x", "user_id": "u" * 300}, "user_id", "at most 256", 256),
    ({"query": "x", "qeury": "y"}, "qeury", "unknown key", None),
])
def test_bad_requests_are_422_naming_field_and_limit(client, body, field, message, limit):
    r = client.post(SEARCH, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field and message in err["message"], err
    assert err.get("limit") == limit, err
    assert err["request_id"] == r.headers["x-request-id"]


def test_malformed_bodies_and_sizes(client):
    r = client.post(SEARCH, content=b'{"query": "x",', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"
    assert r.json()["error"]["message"].startswith("malformed JSON")
    for raw in (b"[]", b'"solar"', b"null"):
        r = client.post(SEARCH, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "body", raw
    # The body is read as JSON whatever the Content-Type says (curl -d sends form-encoded by default).
    r = client.post(SEARCH, content=b'{"query": "solar"}', headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json()["hits"]
    r = client.post(SEARCH, content=b'{"query": "' + b"x" * (2 << 20) + b'"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["limit"] == 1 << 20
    r = client.post(SEARCH, content=b'{"query": "\\ud800"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] in ("body", "query")  # a lone surrogate
    r = client.post(SEARCH, content=b'{"query": "x", "filters": {"cites": NaN}}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "filters.cites"


def test_fast_path_edges_and_the_plain_route(client, make_client):
    def chunks():
        yield b'{"query": "'
        yield b"x" * (1 << 20)
        yield b'"}'

    r = client.post(SEARCH, content=chunks(), headers={"Content-Type": "application/json"})  # chunked: no length
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"
    r = client.post("/v1/indexes/%FF%FE/search", json={"query": "x"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "index"
    fast = client.post(SEARCH, json={"query": "wind turbines", "size": 2}).json()

    # The FastAPI route (what answers without the guard's fast path) gives the same answers.
    from cascade.service.app import RequestGuard

    plain = make_client()
    plain.app.user_middleware = [m for m in plain.app.user_middleware if m.cls is not RequestGuard]
    plain.app.middleware_stack = plain.app.build_middleware_stack()
    a = plain.post(SEARCH, json={"query": "wind turbines", "size": 2})
    assert a.status_code == 200 and a.json()["hits"] == fast["hits"] and "x-request-id" not in a.headers
    bad = plain.post(SEARCH, json={"query": "x", "size": 0})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "size"


def test_unknown_index_route_and_method(client):
    r = client.post("/v1/indexes/nope/search", json={"query": "x"})
    assert r.status_code == 404
    assert r.json()["error"] == {**r.json()["error"], "field": "index", "type": "unknown_index"}
    assert "'nope'" in r.json()["error"]["message"] and "tiny" in r.json()["error"]["message"]
    assert client.get("/v1/indexes/nope/cascade").status_code == 404
    r = client.get("/v2/whatever")
    assert r.status_code == 404 and r.json()["error"]["field"] == "path"
    r = client.delete(SEARCH)
    assert r.status_code == 405 and r.json()["error"]["field"] == "method"


def test_index_list_and_cascade_description(client):
    lst = client.get("/v1/indexes").json()
    assert lst["generation"] == 1
    (tiny,) = lst["indexes"]
    assert tiny["name"] == "tiny" and tiny["status"] == "ready" and tiny["steps"] == ["bm25", "knn", "fusion"]
    assert tiny["cache"] == {"enabled": True, "ttl_s": 300, "pair_scores": False}
    c = client.get("/v1/indexes/tiny/cascade").json()
    assert c["config"]["retrievers"]["bm25"]["k"] == 10 and c["config"]["cache"]["ttl_s"] == 300
    assert [p["name"] for p in c["plan"]] == ["bm25", "knn", "fusion"]
    assert c["overrides"] == {"fusion": {"keep": 10, "rerank": None}} and len(c["fingerprint"]) == 16


def test_overrides_lower_depth_within_config_bounds(client):
    service(client).registry.entries["tiny"].cascade.stages.append(LengthStage(rerank=5, keep=4))
    assert client.get("/v1/indexes/tiny/cascade").json()["overrides"]["length"] == {"keep": 4, "rerank": 5}
    base = client.post(SEARCH, json={"query": "electricity", "explain": True}).json()
    assert base["total"] == 4 and base["trace"][-1]["scored"] == 5
    r = client.post(SEARCH, json={"query": "electricity", "explain": True,
                                  "overrides": {"fusion": {"keep": 3}, "length": {"rerank": 2, "keep": 2}}})
    body = r.json()
    assert r.status_code == 200 and body["cache"] == "miss", r.text
    fusion, length = body["trace"][2], body["trace"][3]
    assert fusion["n_out"] == 3 and length["n_in"] == 3 and length["scored"] == 2 and body["total"] == 2
    r = client.post(SEARCH, json={"query": "electricity", "overrides": {"length": {"rerank": 6}}})
    assert r.status_code == 422 and r.json()["error"]["limit"] == 5
    assert r.json()["error"]["message"] == "at most 5 (what the profile declares for length), got 6"
    # The shared cascade was not touched by the overridden requests.
    again = client.post(SEARCH, json={"query": "electricity", "explain": True}).json()
    assert again["cache"] == "hit" and again["total"] == 4


def test_a_failing_stage_degrades_and_is_not_cached(client):
    service(client).registry.entries["tiny"].cascade.stages.append(FailingStage())
    for _ in range(2):
        r = client.post(SEARCH, json={"query": "deep ocean", "explain": True})
        body = r.json()
        assert r.status_code == 200 and body["degraded"] == ["flaky"] and body["cache"] == "miss"
        assert body["hits"][0]["id"] == "d6"  # the ranking before the failed stage
        assert "model server went away" in body["trace"][-1]["error"]
    metrics = client.get("/metrics").text
    assert 'cascade_degraded_responses_total{index="tiny",profile="default",step="flaky"} 2.0' in metrics


def test_every_retriever_failing_is_503_not_500(client):
    class Broken:
        name = "broken"

        async def retrieve(self, query, k):
            raise OSError("disk gone")

    casc = service(client).registry.entries["tiny"].cascade
    casc.retrievers = {n: Broken() for n in casc.retrievers}
    r = client.post(SEARCH, json={"query": "solar"})
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "search_failed" and "every retriever failed" in r.json()["error"]["message"]


def test_an_index_that_cannot_open_is_503_while_others_serve(make_client):
    client = make_client({"tiny": {}, "ghost": {}})  # ghost has a config but no built index
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable" and body["indexes"]["tiny"]["status"] == "ready"
    assert body["indexes"]["ghost"]["status"] == "unavailable" and "IndexNotFound" in body["indexes"]["ghost"]["error"]
    r = client.post("/v1/indexes/ghost/search", json={"query": "x"})
    assert r.status_code == 503 and "ghost" in r.json()["error"]["message"] and "not found" in r.json()["error"]["message"]
    assert client.post(SEARCH, json={"query": "solar"}).status_code == 200
    desc = client.get("/v1/indexes/ghost/cascade").json()
    assert desc["status"] == "unavailable" and desc["plan"] is None
    assert client.get("/healthz").json() == {"status": "ok"}


def test_admin_reload_needs_the_key_and_swaps_or_keeps(make_client, tmp_path):
    off = make_client()
    assert off.post("/v1/admin/reload").status_code == 403  # no key configured: admin is off

    client = make_client(admin_api_key="s3cret")
    key = {"X-API-Key": "s3cret"}
    assert client.post("/v1/admin/reload").status_code == 401
    r = client.post("/v1/admin/reload", headers={"X-API-Key": "s3cret-but-longer"})
    assert r.status_code == 401 and r.json()["error"]["field"] == "X-API-Key"
    before = client.post(SEARCH, json={"query": "solar"}).json()
    assert before["config_version"] == "1"

    folder = tmp_path / "configs"
    good = (folder / "tiny.yaml").read_text()
    (folder / "tiny.yaml").write_text(good.replace("keep: 10", "keep: oops"))
    r = client.post("/v1/admin/reload", headers=key)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "config_error" and err["field"] == "fusion.keep" and err["file"].endswith("tiny.yaml")
    assert "tiny.yaml: fusion.keep" in err["message"]
    still = client.post(SEARCH, json={"query": "solar"}).json()
    assert still["config_version"] == "1" and still["cache"] == "hit"  # the old cascade kept serving

    (folder / "tiny.yaml").write_text(good.replace("index: tiny", "index: tiny\nversion: '2'"))
    write_config(folder, "ghost")  # a new index that cannot open does not block the reload
    r = client.post("/v1/admin/reload", headers=key)
    assert r.status_code == 200, r.text
    assert r.json()["generation"] == 2
    assert {i["name"]: i["status"] for i in r.json()["indexes"]} == {"tiny": "ready", "ghost": "unavailable"}
    after = client.post(SEARCH, json={"query": "solar"}).json()
    assert after["config_version"] == "2" and after["cache"] == "miss" and after["hits"] == before["hits"]
    (folder / "tiny.yaml").unlink()  # the index that serves would go away: that is allowed, it is the config
    r = client.post("/v1/admin/reload", headers=key)
    assert r.status_code == 200 and [i["name"] for i in r.json()["indexes"]] == ["ghost"]
    assert client.post(SEARCH, json={"query": "solar"}).status_code == 404


def test_metrics_after_searches(client):
    client.post(SEARCH, json={"query": "protein folding"})
    client.post(SEARCH, json={"query": "protein folding"})
    client.post(SEARCH, json={"query": ""})
    text = client.get("/metrics").text
    for line in ('cascade_cache_lookups_total{index="tiny",result="hit"} 1.0',
                 'cascade_cache_lookups_total{index="tiny",result="miss"} 1.0',
                 'cascade_search_requests_total{cache="hit",index="tiny",profile="default",status="200"} 1.0',
                 'cascade_step_seconds_count{index="tiny",kind="retriever",profile="default",step="bm25"} 1.0',
                 'cascade_step_candidates_bucket{index="tiny",kind="fusion",le="10.0",profile="default",step="fusion"} 1.0',
                 'cascade_index_ready{index="tiny",version="1"} 1.0'):
        assert line in text, line


def test_openapi_describes_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/indexes/{index}/search", "/v1/indexes", "/v1/indexes/{index}/cascade", "/v1/admin/reload",
            "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    req = spec["components"]["schemas"]["SearchRequest"]
    assert {"query", "filters", "size", "from", "explain", "overrides", "user_id", "session_id",
            "budget_ms", "profile", "experiment", "arm", "user_attributes"} == set(req["properties"])
    assert req["required"] == ["query"] and req["additionalProperties"] is False
    search = spec["paths"]["/v1/indexes/{index}/search"]["post"]
    assert {"200", "404", "422", "503"} <= set(search["responses"])
    assert search["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


async def _opened(app):
    """The app's service state once its indexes have left 'loading' (bounded: two minutes)."""
    state = app.state.service
    for _ in range(2400):
        if state.registry.status != "loading":
            break
        await asyncio.sleep(0.05)
    return state


async def test_identical_misses_compute_once_and_overload_is_503(tmp_path, tiny_index_dir):
    write_config(tmp_path / "configs")
    app = create_app(make_settings(tmp_path, tiny_index_dir, max_concurrent_searches=1, max_queued_searches=1),
                     ConfigSource(directory=tmp_path / "configs"))
    async with app.router.lifespan_context(app):
        state = await _opened(app)
        assert state.registry.status == "ready"
        slow = SlowSearch(state.registry.entries["tiny"].cascade, delay_s=0.4)
        state.registry.entries["tiny"].cascade.search = slow
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cascade") as http:
            same = await asyncio.gather(*(http.post(SEARCH, json={"query": "gene expression"}) for _ in range(8)))
            assert [r.status_code for r in same] == [200] * 8
            assert slow.calls == 1 and {r.json()["cache"] for r in same} == {"miss"}
            assert len({tuple(h["id"] for h in r.json()["hits"]) for r in same}) == 1
            assert (await http.post(SEARCH, json={"query": "gene expression"})).json()["cache"] == "hit"

            # One computing, one waiting, the third distinct query is turned away at once.
            distinct = await asyncio.gather(*(http.post(SEARCH, json={"query": f"fish {i}"}) for i in range(3)))
            codes = sorted(r.status_code for r in distinct)
            assert codes == [200, 200, 503], codes
            rejected = next(r for r in distinct if r.status_code == 503)
            assert rejected.headers["retry-after"] in ("1", "2") and rejected.json()["error"]["type"] == "overloaded"
            metrics = (await http.get("/metrics")).text
            assert 'cascade_singleflight_shared_total{index="tiny"} 7.0' in metrics
            assert 'cascade_overload_rejections_total{index="tiny"} 1.0' in metrics


async def test_overload_sheds_at_once_what_could_not_be_answered_in_time(tmp_path, tiny_index_dir):
    """With one slot, a long queue allowed and searches holding it ~0.3 s, only as many wait as can start
    within max_queue_wait_s; the rest get 503 + Retry-After at once rather than after queueing."""
    write_config(tmp_path / "configs")
    app = create_app(make_settings(tmp_path, tiny_index_dir, max_concurrent_searches=1, max_queued_searches=64,
                                   max_queue_wait_s=1.0), ConfigSource(directory=tmp_path / "configs"))
    async with app.router.lifespan_context(app):
        state = await _opened(app)
        slow = SlowSearch(state.registry.entries["tiny"].cascade, delay_s=0.3)
        state.registry.entries["tiny"].cascade.search = slow
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cascade", timeout=30) as http:
            assert (await http.post(SEARCH, json={"query": "warm the estimate"})).status_code == 200
            hold = state.admission.hold_s
            assert hold is not None and 0.3 <= hold < 1.0
            expected_ok = 1 + int(1.0 // hold)  # one runs; the k-th waiter expects k * hold seconds

            async def timed(i: int):
                t = asyncio.get_running_loop().time()
                r = await http.post(SEARCH, json={"query": f"protein fish {i}"})
                return r, asyncio.get_running_loop().time() - t

            got = await asyncio.gather(*(timed(i) for i in range(12)))
            ok = [t for r, t in got if r.status_code == 200]
            shed = [(r, t) for r, t in got if r.status_code == 503]
            assert len(ok) + len(shed) == 12 and abs(len(ok) - expected_ok) <= 1, (len(ok), expected_ok, hold)
            assert all(t < 0.2 for _, t in shed)  # turned away at once, not after waiting
            assert max(ok) < 1.0 + 2 * hold  # nobody admitted waited much past the allowed wait
            for r, _ in shed:
                err = r.json()["error"]
                assert err["type"] == "overloaded" and "expected wait" in err["message"]
                assert int(r.headers["retry-after"]) >= 1
            metrics = (await http.get("/metrics")).text
            assert f'cascade_overload_rejections_total{{index="tiny"}} {float(len(shed))}' in metrics

            # A budget tighter than the expected wait is shed even when max_queue_wait_s would allow it.
            blockers = [asyncio.create_task(http.post(SEARCH, json={"query": f"gene block {i}"})) for i in range(2)]
            await asyncio.sleep(0.05)
            r = await http.post(SEARCH, json={"query": "gene budget", "budget_ms": 100})
            assert r.status_code == 503 and "longer than the 0.1 s" in r.json()["error"]["message"]
            await asyncio.gather(*blockers)


def test_the_container_runs_the_service():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    assert 'CMD ["cascade", "serve", "--host", "0.0.0.0", "--port", "8080"]' in (root / "Dockerfile").read_text()
    svc = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]["cascade"]
    assert svc["command"][:2] == ["cascade", "serve"] and "CASCADE_REDIS_URL=redis://redis:6379/0" in svc["environment"]


# --- regressions found in review ---------------------------------------------------------------------------------

def test_a_reload_closes_the_replaced_indexes(make_client):
    """Regression: a reload closed nothing (HTTP clients, batcher threads, mmaps, cluster sessions)."""
    client = make_client(admin_api_key="s3cret")
    old = service(client).registry.entries["tiny"].opened
    assert client.post(SEARCH, json={"query": "solar"}).status_code == 200
    r = client.post("/v1/admin/reload", headers={"X-API-Key": "s3cret"})
    assert r.status_code == 200, r.text
    new = service(client).registry.entries["tiny"].opened
    assert new is not old
    deadline = __import__("time").monotonic() + 10
    while not old.closed and __import__("time").monotonic() < deadline:
        client.get("/healthz")  # let the event loop run the close task
    assert old.closed and old.backend._docs is None and not new.closed
    assert client.post(SEARCH, json={"query": "wind"}).status_code == 200  # the new generation serves


def test_an_unexpected_error_is_a_generic_500_with_the_request_id(client, caplog):
    """Regression: any unexpected exception became a 503 carrying the exception's text."""
    casc = service(client).registry.entries["tiny"].cascade

    async def broken(*a, **kw):
        raise ValueError("secret internals at /srv/cascade/state.py")

    casc.search = broken
    r = client.post(SEARCH, json={"query": "anything new"}, headers={"X-Request-ID": "req-42"})
    assert r.status_code == 500
    err = r.json()["error"]
    assert "secret" not in r.text and err["type"] == "internal" and "req-42" in err["message"]
    assert any("req-42" in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_warm_up_does_not_seed_the_cost_model_with_a_cold_run(make_client):
    """Regression: the warm-up search seeded the stage cost model with a cold run, so early budgeted
    requests were shrunk for nothing. Warm-up now forgets its first run and learns from a warm one."""
    import time as _time

    from cascade.stages.base import Reranker

    class ColdOnce(Reranker):
        kind = "cold_once"
        calls = 0

        async def score(self, query, candidates, deadline):
            ColdOnce.calls += 1
            if ColdOnce.calls == 1:
                _time.sleep(0.5)  # a cold first call: lazy loading
            return np.arange(len(candidates), dtype=float)

    client = make_client()
    state = service(client)
    entry = state.registry.entries["tiny"]
    casc = entry.cascade
    casc.stages.append(ColdOnce("cold"))
    asyncio.run(state._warm(entry))
    assert ColdOnce.calls == 2
    assert casc._costs.estimate("cold", 10) < 100  # milliseconds for 10 candidates: the warm run, not 500 ms
