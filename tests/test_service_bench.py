"""`cascade bench-serve` machinery: wrk output parsing, the POST script, and one short real run on the tiny index.

Timings are never asserted (this machine is shared); the run only has to
produce numbers, with every request a cache hit in the load phase.
"""

from __future__ import annotations

import shutil

import pytest

from cascade.bench import load as loadgen, serve as bench
from tests.conftest import tiny_config
from tests.service_fixtures import make_settings, tiny_index_dir  # noqa: F401

WRK_OUT = """Running 10s test @ http://127.0.0.1:1/v1/indexes/x/search
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  500.00us  20.00ms   90.00%
  Latency Distribution
     50%  950.00us
     75%    1.20ms
     90%    1.80ms
     99%    6.81ms
  28748 requests in 10.01s, 400.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:   2872.13
Transfer/sec:     40.00MB
"""


def test_parse_wrk_output():
    assert loadgen.parse_wrk(WRK_OUT) == (28748, 2872.13, pytest.approx(0.95), 6.81, 8)


def test_wrk_script_quotes_any_body(tmp_path):
    script = loadgen.wrk_script(['{"query": "a ]] b ]=] c"}', '{"query": "plain"}'], tmp_path / "post.lua").read_text()
    assert 'wrk.method = "POST"' in script and '[==[{"query": "a ]] b ]=] c"}]==]' in script
    assert "request = function()" in script


def test_cheap_config_drops_pair_stages_from_every_profile():
    import yaml

    from cascade.config import dump_config, parse_config

    ce = {"type": "cross_encoder", "model": "m", "rerank": 5}
    cfg = tiny_config(stages=[ce], profiles={"lite": {"inherit": "default", "fusion": {"keep": 5}}})
    cheap = bench.cheap_config(cfg, with_cross_encoder=False)
    assert all(cheap.profile(n).stages == [] for n in cheap.profile_names()) and cheap.stages == []
    assert cheap.profiles["lite"].fusion.keep == 5 and cheap.cache.enabled
    again = parse_config(yaml.safe_load(dump_config(cheap)), "tiny.yaml")  # what the service is given
    assert again.profile_names() == ["default", "lite"]
    assert all(again.profile(n).stages == [] for n in again.profile_names())
    kept = bench.cheap_config(cfg, with_cross_encoder=True)
    assert [s.stage_name for s in kept.profile("lite").stages] == ["cross_encoder"]


def test_a_short_real_run(tmp_path, tiny_index_dir):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (`make test` installs it)")
    cfg = bench.cheap_config(tiny_config(), with_cross_encoder=False)
    assert cfg.version.startswith("1+bench") and cfg.cache.enabled
    r = bench.run(cfg, make_settings(tmp_path, tiny_index_dir), ["solar power", "deep sea fish", "gene expression"],
                  concurrency=[2], duration_s=1, cached_bodies=3)
    assert r.misses == 3 and len(r.http_uncached_ms) == len(r.inproc_ms) == 3
    (load,) = r.load
    assert load.requests > 0 and load.errors == 0 and load.hits >= load.requests
    assert load.tool in ("wrk", "python (asyncio + httpx)") and r.cache_backend.startswith("Redis")
    text = r.markdown("cascade bench-serve ...", "a machine")
    assert "| 2 | 1 |" in text and "Transport overhead" in text
    assert r.section()[0] == "service-tiny" and len(r.tables()) == 2
