"""Per-request latency budgets through the HTTP API: validation, the `budget` field, the index ceiling, the cache.

The cascade is the real tiny index (tantivy + faiss over MiniLM embeddings)
with one deliberately slow stage appended: 100 ms per scored candidate, five
candidates, so a full run costs about half a second and a budget of a few
hundred milliseconds can only cover some of it. The first search teaches the
controller's cost model what the stage costs (it has no estimate before).
"""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from cascade.service import create_app
from cascade.service.registry import ConfigSource
from tests.service_fixtures import (  # noqa: F401  (fixtures)
    LengthStage,
    make_settings,
    tiny_index_dir,
    wait_ready,
    write_config,
)

SEARCH = "/v1/indexes/tiny/search"
PER_CANDIDATE_S = 0.1


class SlowStage(LengthStage):
    """Scores like LengthStage, at 100 ms per candidate."""

    kind = "slow"

    def __init__(self) -> None:
        super().__init__("slow", rerank=5, keep=None)

    async def score(self, query, candidates, deadline):
        await asyncio.sleep(PER_CANDIDATE_S * len(candidates))
        return await super().score(query, candidates, deadline)


@pytest.fixture
def make_client(tmp_path, tiny_index_dir):  # noqa: F811  (the fixture imported above)
    made = []

    def make(**changes) -> TestClient:
        folder = tmp_path / "configs"
        write_config(folder, "tiny", **changes)
        app = create_app(make_settings(tmp_path, tiny_index_dir), ConfigSource(directory=folder))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        made.append(client)
        wait_ready(client)
        client.app.state.service.registry.entries["tiny"].cascade.stages.append(SlowStage())
        return client

    yield make
    for c in made:
        c.__exit__(None, None, None)


def teach_cost(client: TestClient) -> None:
    """One full search (no estimate yet, so nothing is cut) so the controller knows the slow stage's cost."""
    r = client.post(SEARCH, json={"query": "cascade cost lesson", "explain": True})
    assert r.status_code == 200 and r.json()["trace"][-1]["scored"] == 5, r.text


def slow_step(body: dict) -> dict:
    step = body["trace"][-1]
    assert step["name"] == "slow"
    return step


def test_tight_budget_skips_or_shrinks_the_slow_stage_and_says_so(make_client):
    client = make_client()
    teach_cost(client)

    full = client.post(SEARCH, json={"query": "electricity", "explain": True}).json()
    assert "budget" not in full and slow_step(full)["scored"] == 5 and "note" not in slow_step(full)
    # Without explain too: the response says the budget applied and what it cut.
    r = client.post(SEARCH, json={"query": "solar electricity", "budget_ms": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["budget"] == {"ms": 1.0, "source": "request", "skipped": ["slow"], "shrunk": {}}
    assert body["degraded"] == [] and "trace" not in body  # a budget decision is not a failure

    # A budget that covers part of the stage (up to 4 of its 5 candidates at 100 ms each) shrinks it; retrieval
    # would have to take over 350 ms for it to be skipped instead.
    r = client.post(SEARCH, json={"query": "wind electricity", "budget_ms": 450, "explain": True})
    body = r.json()
    step = slow_step(body)
    assert body["budget"]["skipped"] == [] and body["budget"]["shrunk"] == {"slow": step["scored"]}, body["budget"]
    assert 0 < step["scored"] < 5 and step["note"] == f"shrunk to {step['scored']} candidates to fit the budget"
    # The scored head ranks first; the rest follows in fusion order.
    fusion = next(t for t in body["trace"] if t["name"] == "fusion")
    head = [h["id"] for h in body["hits"][: step["scored"]]]
    assert [h["id"] for h in body["hits"][step["scored"]:]] == [
        t["id"] for t in fusion["top"] if t["id"] not in head][: len(body["hits"]) - step["scored"]]

    # A budget the stage fits in cuts nothing, and says so.
    r = client.post(SEARCH, json={"query": "deep ocean fish", "budget_ms": 60_000, "explain": True})
    body = r.json()
    assert body["budget"] == {"ms": 60_000.0, "source": "request", "skipped": [], "shrunk": {}}
    assert slow_step(body)["scored"] == 5

    metrics = client.get("/metrics").text
    assert 'cascade_budget_cuts_total{action="skipped",index="tiny",profile="default",step="slow"} 1.0' in metrics
    assert 'cascade_budget_cuts_total{action="shrunk",index="tiny",profile="default",step="slow"} 1.0' in metrics


def test_budget_cut_answers_are_never_served_from_the_cache(make_client):
    client = make_client()
    teach_cost(client)
    q = {"query": "battery storage", "explain": True}

    cut = client.post(SEARCH, json={**q, "budget_ms": 1}).json()
    assert cut["cache"] == "miss" and cut["budget"]["skipped"] == ["slow"]
    # The cut answer was not stored: the same request without a budget computes the full cascade...
    full = client.post(SEARCH, json=q).json()
    assert full["cache"] == "miss" and "budget" not in full and slow_step(full)["scored"] == 5
    # ... and a second tight request is not served the cut answer either: the full one is cached now, and a
    # cache hit fits any budget, so it gets that (with nothing cut).
    again = client.post(SEARCH, json={**q, "budget_ms": 1}).json()
    assert again["cache"] == "hit" and again["hits"] == full["hits"] and slow_step(again)["scored"] == 5
    assert again["budget"] == {"ms": 1.0, "source": "request", "skipped": [], "shrunk": {}}
    plain = client.post(SEARCH, json=q).json()
    assert plain["cache"] == "hit" and "budget" not in plain

    # A budget that cut nothing gives the full answer, which is cached and served to callers without one.
    q2 = {"query": "protein folding", "explain": True}
    roomy = client.post(SEARCH, json={**q2, "budget_ms": 60_000}).json()
    assert roomy["cache"] == "miss" and roomy["budget"]["skipped"] == [] and roomy["budget"]["shrunk"] == {}
    after = client.post(SEARCH, json=q2).json()
    assert after["cache"] == "hit" and after["hits"] == roomy["hits"] and "budget" not in after


def test_index_budget_is_a_ceiling_a_request_cannot_raise(make_client):
    client = make_client(limits={"budget_ms": 1})
    teach_cost(client)  # the stage had no estimate yet, so it ran whole despite the index's budget

    body = client.post(SEARCH, json={"query": "electricity"}).json()
    assert body["budget"] == {"ms": 1.0, "source": "index", "skipped": ["slow"], "shrunk": {}}
    body = client.post(SEARCH, json={"query": "electricity", "budget_ms": 5_000}).json()
    assert body["budget"] == {"ms": 1.0, "source": "index", "skipped": ["slow"], "shrunk": {}}
    assert body["cache"] == "miss"  # the cut answer above was not cached
    body = client.post(SEARCH, json={"query": "wind", "budget_ms": 0.5}).json()  # tighter than the index: it wins
    assert body["budget"] == {"ms": 0.5, "source": "request", "skipped": ["slow"], "shrunk": {}}


def test_invalid_budget_is_422_naming_budget_ms(make_client):
    client = make_client()
    for value, message, limit in [  # raw JSON text
        ("0", "greater than 0", 0),
        ("-5", "greater than 0", 0),
        ("60001", "less than or equal to 60000", 60_000),
        ("Infinity", "finite number", None),
        ("1e400", "finite number", None),
        ('"50"', "valid number", None),
        ("true", "valid number", None),
        ("[50]", "valid number", None),
    ]:
        r = client.post(SEARCH, content=f'{{"query": "solar", "budget_ms": {value}}}')
        assert r.status_code == 422, (value, r.text)
        err = r.json()["error"]
        assert err["field"] == "budget_ms" and message in err["message"] and err.get("limit") == limit, (value, err)
    assert client.post(SEARCH, json={"query": "solar", "budget_ms": None}).json()["cache"] == "miss"  # null: none


def test_budget_in_the_openapi_spec(make_client):
    spec = make_client().get("/openapi.json").json()
    prop = spec["components"]["schemas"]["SearchRequest"]["properties"]["budget_ms"]
    assert prop["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0, "maximum": 60_000}
    assert "budget" in spec["components"]["schemas"]["SearchResponse"]["properties"]
