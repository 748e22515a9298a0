"""Helpers for the service tests: a built tiny index, a real redis-server process, a real uvicorn server.

Every wait here is bounded (seconds, not forever) so a broken server fails a
test instead of hanging CI.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cascade.experiments.traffic import TempRedis
from cascade.settings import Settings
from cascade.stages.base import Reranker
from tests.conftest import TINY_CONFIG, TINY_DOCS, tiny_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_index_dir(tmp_path_factory) -> Path:
    """The tiny corpus built once per module into a real embedded index."""
    from connectors.embedded import build_index

    d = tmp_path_factory.mktemp("indexes")
    s = Settings(index_dir=d, config_dir=d / "unused", cache_dir=d / "cache")
    build_index(tiny_config(), ((i + 1, dict(x)) for i, x in enumerate(TINY_DOCS)), s, source="tiny.jsonl")
    return d


def write_config(folder: Path, name: str = "tiny", **changes: Any) -> Path:
    """A copy of the tiny config under another name (same built index only when name == 'tiny')."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {**yaml.safe_load(yaml.safe_dump(TINY_CONFIG)), "index": name, **changes}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_settings(tmp: Path, index_dir: Path, **kw: Any) -> Settings:
    return Settings(index_dir=index_dir, config_dir=tmp / "configs", cache_dir=tmp / "cache", **kw)


def wait_until(check, timeout_s: float = 120.0, every_s: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def wait_ready(client, timeout_s: float = 120.0) -> dict:
    def ready():
        r = client.get("/readyz")
        return r.json() if r.json()["status"] != "loading" else None
    return wait_until(ready, timeout_s, what="/readyz to leave 'loading'")


class LengthStage(Reranker):
    """A cheap real stage (scores by document length) so overrides and traces have a stage to act on."""

    kind = "length"

    def __init__(self, name: str = "length", rerank: int | None = 5, keep: int | None = 4):
        super().__init__(name, rerank, keep)

    async def score(self, query, candidates, deadline):
        return np.array([len(candidates.text(i, ["title", "text"])) for i in range(len(candidates))], dtype=float)


class FailingStage(Reranker):
    kind = "flaky"

    def __init__(self, name: str = "flaky"):
        super().__init__(name, None, None)

    async def score(self, query, candidates, deadline):
        raise RuntimeError("model server went away")


class CountingScorer:
    """A blocking pair runtime that counts the pairs it is asked to score (the cache must spare it repeats).

    Like the real runtimes, an empty document is NaN (not scored, not counted).
    """

    name = "counting-scorer"

    def __init__(self, stamp: str = "counting-v1") -> None:
        self.pairs = 0
        self.stamp = stamp
        self.lock = threading.Lock()

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        with self.lock:
            self.pairs += sum(1 for d in docs if d)
        return np.array([float(len(d) % 97) + len(query) / 100 if d else np.nan for d in docs])


class SlowSearch:
    """Wraps a cascade's ``search`` to count computations and hold each one long enough to overlap."""

    def __init__(self, cascade, delay_s: float = 0.3):
        self.inner, self.delay_s, self.calls = cascade.search, delay_s, 0

    async def __call__(self, *a, **kw):
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return await self.inner(*a, **kw)


class RedisServer(TempRedis):
    """A real redis-server on a free loopback port, which a test may stop, restart, pause and resume."""

    def __init__(self, folder: Path, appendfsync: str | None = None):
        super().__init__(folder, appendfsync)
        self.paused = False

    def stop(self) -> None:
        if self.paused:
            self.resume()
        super().stop()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2)


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (`make test` installs it: apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class ServerThread:
    """uvicorn serving ``app`` on a free loopback port in a thread of this process, configured like `cascade serve`
    (``server_config``: the same protocol, connection limits and loop), with ``settings``' HTTP limits."""

    def __init__(self, app, settings: Settings | None = None):
        import uvicorn

        from cascade.service import server_config

        self.port = free_port()
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port, settings or Settings(),
                                                   access_log=False, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 60, what="uvicorn to start")
        if not self.server.started:
            raise AssertionError("uvicorn did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
