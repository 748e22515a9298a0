"""The service over real sockets: uvicorn on a loopback port, a real redis-server, and `cascade serve` as a process.

Redis is stopped and paused in the middle of these tests: searches must keep
answering (uncached, ``cache: "miss"``), the metrics must count it, and caching
must come back by itself once Redis does.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cascade.service import create_app
from cascade.service.registry import ConfigSource
from tests.service_fixtures import (  # noqa: F401  (fixtures)
    ServerThread, free_port, make_settings, redis_server, tiny_index_dir, wait_until, write_config,
)

SEARCH = "/v1/indexes/tiny/search"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text, 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def served(tmp_path, tiny_index_dir, redis_server):
    write_config(tmp_path / "configs", cache={"ttl_s": 120})
    settings = make_settings(tmp_path, tiny_index_dir, redis_url=redis_server.url, redis_timeout_s=0.1,
                             redis_retry_s=0.3)
    app = create_app(settings, ConfigSource(directory=tmp_path / "configs"))
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        wait_until(lambda: http.get("/readyz").json()["status"] == "ready", 120, what="/readyz")
        yield http, redis_server


def test_main_flows_over_http_with_redis(served):
    http, redis = served
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["cache"]["backend"] == "redis" and ready["cache"]["state"] == "up"
    assert [i["name"] for i in http.get("/v1/indexes").json()["indexes"]] == ["tiny"]

    r = http.post(SEARCH, json={"query": "deep ocean fish", "size": 3, "explain": True})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    first = r.json()
    assert first["cache"] == "miss" and first["hits"][0]["id"] == "d6" and first["trace"][2]["name"] == "fusion"
    keys = redis.client().keys("cascade:result:tiny:*")
    assert len(keys) == 1 and 0 < redis.client().ttl(keys[0]) <= 120
    second = http.post(SEARCH, json={"query": "deep ocean fish", "size": 3, "explain": True}).json()
    assert second["cache"] == "hit" and second["hits"] == first["hits"] and second["trace"] == first["trace"]
    assert second["request_id"] != first["request_id"]

    bad = http.post(SEARCH, json={"query": "x", "size": 1000})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "size" and bad.json()["error"]["limit"] == 100
    assert http.post("/v1/indexes/missing/search", json={"query": "x"}).status_code == 404
    plan = http.get("/v1/indexes/tiny/cascade").json()["plan"]
    assert [p["name"] for p in plan] == ["bm25", "knn", "fusion"]
    m = http.get("/metrics").text
    assert metric(m, "cascade_cache_lookups_total", index="tiny", result="hit") == 1
    assert metric(m, "cascade_cache_lookups_total", index="tiny", result="miss") == 1
    assert metric(m, "cascade_search_seconds_count", index="tiny", cache="hit") == 1


def test_redis_stopped_mid_test_searches_go_on_uncached_and_caching_resumes(served):
    http, redis = served
    assert http.post(SEARCH, json={"query": "gene expression"}).json()["cache"] == "miss"
    assert http.post(SEARCH, json={"query": "gene expression"}).json()["cache"] == "hit"

    redis.stop()
    for q in ("gene expression", "gene expression", "battery storage"):
        t = time.perf_counter()
        r = http.post(SEARCH, json={"query": q})
        assert r.status_code == 200 and r.json()["cache"] == "miss" and r.json()["hits"], r.text
        assert time.perf_counter() - t < 2.0
    m = http.get("/metrics").text
    assert metric(m, "cascade_cache_errors_total", backend="redis", op="get") >= 1
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["cache"]["state"] == "down"  # fail-open: still ready

    redis.start()  # same port, empty
    time.sleep(0.4)  # past the retry window
    assert http.post(SEARCH, json={"query": "gene expression"}).json()["cache"] == "miss"
    assert http.post(SEARCH, json={"query": "gene expression"}).json()["cache"] == "hit"
    assert http.get("/readyz").json()["cache"]["state"] == "up"


def test_a_paused_redis_costs_a_timeout_not_an_outage(served):
    http, redis = served
    redis.pause()
    try:
        t = time.perf_counter()
        r = http.post(SEARCH, json={"query": "protein folding"})
        assert r.status_code == 200 and r.json()["cache"] == "miss"
        assert time.perf_counter() - t < 2.0
        assert r.json()["took_ms"] < 2000
    finally:
        redis.resume()
    time.sleep(0.4)
    assert http.post(SEARCH, json={"query": "protein folding"}).json()["cache"] == "miss"
    assert http.post(SEARCH, json={"query": "protein folding"}).json()["cache"] == "hit"


def _errors(http) -> float:
    m = http.get("/metrics").text
    return sum(metric(m, "cascade_cache_errors_total", backend="redis", op=op) for op in ("get", "set", "get_skipped",
                                                                                          "set_skipped"))


def test_a_redis_restart_under_load_trips_no_breaker_once_redis_answers_ping(served):
    """Regression: after a restart every pooled connection was dead, and each one's first command failed
    ("Connection closed by server") and opened the breaker for a second of uncached searches."""
    http, redis = served
    queries = ["solar panels", "wind turbines", "battery storage", "deep sea fish", "gene expression",
               "protein folding", "ocean glow", "cells electricity"]

    def load(rounds: int) -> list[str]:
        with httpx.Client(base_url=str(http.base_url), timeout=30) as c:
            out = []
            for i in range(rounds):
                r = c.post(SEARCH, json={"query": queries[i % len(queries)]})
                assert r.status_code == 200, r.text
                out.append(r.json()["cache"])
            return out

    with ThreadPoolExecutor(8) as ex:  # eight clients at once: the pool holds several connections
        list(ex.map(load, [16] * 8))
    assert _errors(http) == 0
    redis.stop()
    redis.start()  # same port, empty; returns once it answers PING
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(load, [16] * 8))
    assert _errors(http) == 0, "a stale pooled connection failed a command after Redis was back"
    assert load(len(queries)) == ["hit"] * len(queries)  # refilled at once and served from Redis again
    assert http.get("/readyz").json()["cache"]["state"] == "up"


def test_the_pair_score_store_survives_a_redis_restart(redis_server):
    from connectors.score_cache import RedisPairStore

    errors: list[str] = []

    async def run() -> None:
        store = RedisPairStore(redis_server.url, timeout_s=0.2, retry_s=5.0, on_error=lambda op, e: errors.append(op))
        try:
            keys = [f"k{i}" for i in range(50)]
            await store.set_many({k: b"x" for k in keys}, 60)
            await asyncio.gather(*(store.get_many(keys) for _ in range(8)))  # several pooled connections
            redis_server.stop()
            redis_server.start()
            await store.set_many({k: b"y" for k in keys}, 60)
            got = await asyncio.gather(*(store.get_many(keys) for _ in range(8)))
            assert all(v == [b"y"] * 50 for v in got)
        finally:
            await store.close()

    asyncio.run(run())
    assert errors == []


def _cli_env(tmp_path, index_dir, redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env.update(CASCADE_INDEX_DIR=str(index_dir), CASCADE_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", CASCADE_CONFIG_DIR=str(tmp_path / "nowhere"))
    if redis_url:
        env["CASCADE_REDIS_URL"] = redis_url
    return env


def test_cascade_serve_process(tmp_path, tiny_index_dir, redis_server):
    folder = tmp_path / "configs"
    write_config(folder)
    port = free_port()
    cmd = [sys.executable, "-m", "cascade.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--index-config", str(folder), "--no-access-log"]
    proc = subprocess.Popen(cmd, env=_cli_env(tmp_path, tiny_index_dir, redis_server.url), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"cascade serve exited with {proc.returncode}: {proc.stdout.read()}")
            try:
                return httpx.get(url + "/readyz", timeout=2).json()["status"] == "ready"
            except httpx.HTTPError:
                return False

        wait_until(ready, 180, every_s=0.25, what="cascade serve to be ready")
        with httpx.Client(base_url=url, timeout=30) as http:
            a = http.post(SEARCH, json={"query": "wind turbines", "size": 2}).json()
            b = http.post(SEARCH, json={"query": "wind turbines", "size": 2}).json()
            assert a["hits"][0]["id"] == "d2" and (a["cache"], b["cache"]) == ("miss", "hit")
            assert http.get("/openapi.json").json()["info"]["title"] == "cascade"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGTERM), out  # uvicorn re-raises the signal after a clean shutdown
        assert "Application shutdown complete" in out
        assert f"serving tiny at http://127.0.0.1:{port}" in out and "curl -s" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_cascade_serve_refuses_a_bad_config_before_listening(tmp_path, tiny_index_dir):
    folder = tmp_path / "configs"
    write_config(folder, cache={"ttl_s": 0})
    r = subprocess.run([sys.executable, "-m", "cascade.cli", "serve", "--port", str(free_port()), "--index-config",
                        str(folder)], env=_cli_env(tmp_path, tiny_index_dir, None), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert "tiny.yaml: cache.ttl_s" in r.stderr and "greater than or equal to 1" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cascade.cli", "serve", "--index-config", str(tmp_path / "none")],
                       env=_cli_env(tmp_path, tiny_index_dir, None), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "config directory does not exist" in r.stderr
