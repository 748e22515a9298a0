"""Acknowledged events survive a crashed Redis (AOF, appendfsync always) and a crashed consumer, counted once.

Real processes throughout: redis-server with AOF, `cascade serve` (consumer off), `cascade experiments consume`
killed with SIGKILL halfway and started again, four concurrent clients retrying until acknowledged.
"""

from __future__ import annotations

import shutil

import pytest

from tests.service_fixtures import tiny_index_dir, write_config  # noqa: F401

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (`make test` installs it)")


@pytest.mark.parametrize("fsync, fault", [("always", "redis-crash"), ("everysec", "consumer-crash"),
                                          ("everysec", "redis-restart")])
def test_every_acknowledged_event_is_counted_exactly_once(tmp_path, tiny_index_dir, fsync, fault):
    from cascade.bench.experiments import durability_run

    write_config(tmp_path / "configs", profiles={"lexical": {"inherit": "default", "fusion": {"weights": {"knn": 0}}}},
                 experiments={"dur": {"mode": "ab", "arms": ["default", "lexical"]}})
    out = durability_run(tmp_path / "configs", "tiny", "dur", "solar electricity", appendfsync=fsync, fault=fault,
                         events=300, env={"CASCADE_INDEX_DIR": str(tiny_index_dir),
                                          "CASCADE_CACHE_DIR": str(tmp_path / "cache")}, log_dir=tmp_path)
    assert out["acknowledged"] == 300, out
    assert out["lost"] == 0 and out["duplicates"] == 0 and out["counted"] == 300, out
    if fault.startswith("redis"):
        assert out["retries"] > 0, out  # the clients did hit the outage (and retried through it)
