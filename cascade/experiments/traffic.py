"""Simulated traffic over HTTP: a real ``cascade serve`` process, a Redis for its events, and the user loop's
HTTP side (searches, then UBI events), for ``cascade experiments simulate`` and the experiment benchmarks.

Nothing here takes a shortcut into the service: searches go to
``POST /v1/indexes/{index}/search`` with a user id, the list served is what
the simulated user sees, and impressions and clicks go to ``POST /v1/events``
(retried, honouring ``Retry-After``, when the service sheds them). The service
runs in its own process, as in production, so the driver and the service do
not share an interpreter.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempRedis:
    """A throwaway redis-server on a free loopback port (Debian's package), for a simulation without
    CASCADE_REDIS_URL. ``appendfsync`` None: no persistence at all."""

    def __init__(self, folder: Path | None = None, appendfsync: str | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("simulated traffic needs Redis for its events: set CASCADE_REDIS_URL or install "
                               "redis-server (`make redis` does)")
        self.binary, self.port = binary, free_port()
        self.folder = folder or Path(tempfile.mkdtemp(prefix="cascade-redis-"))
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "TempRedis":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.folder),
                "--protected-mode", "no"]
        args += ["--appendonly", "yes", "--appendfsync", self.appendfsync] if self.appendfsync else ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: a crash (what AOF's appendfsync setting protects against)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (Redis flushes its AOF)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


class ServiceProcess:
    """``cascade serve`` over the configs in ``config_dir``, in its own process, until :meth:`stop`."""

    def __init__(self, config_dir: Path, *, env: dict[str, str] | None = None, log: Path | None = None):
        self.config_dir, self.port = config_dir, free_port()
        self.env = {**os.environ, **(env or {})}
        self.log = log or Path(tempfile.mkstemp(prefix="cascade-serve-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 600) -> "ServiceProcess":
        out = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "cascade.cli", "serve", "--index-config",
                                      str(self.config_dir), "--host", "127.0.0.1", "--port", str(self.port)],
                                     env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cascade serve exited ({self.proc.returncode}); its log: {self.log}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"cascade serve was not ready within {timeout_s:.0f} s; its log: {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


@dataclass
class HttpTraffic:
    """The HTTP side of the simulated-user loop (:func:`cascade.experiments.simulate.run_stream`)."""

    url: str
    index: str
    arms: list[str]
    k: int = 10
    impressions: bool = True  # post an impression event per shown document, besides the clicks
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))
    search_ms: list[float] = field(default_factory=list)
    events_ms: list[float] = field(default_factory=list)
    events_sent: int = 0
    retries: int = 0
    _last: tuple[str, list[str]] | None = None

    def serve(self, user: str, qid: str, text: str) -> tuple[list[str], list[int] | None, int | None]:
        t = time.perf_counter()
        r = self._post(f"{self.url}/v1/indexes/{self.index}/search", {"query": text, "user_id": user, "size": self.k})
        self.search_ms.append((time.perf_counter() - t) * 1e3)
        body = r.json()
        ids = [h["id"] for h in body["hits"]]
        self._last = (body["query_id"], ids)
        exp = body.get("experiment") or {}
        if exp.get("mode") == "ab":
            return ids, None, self.arms.index(exp["arm"])
        if exp:
            return ids, [self.arms.index(h["arm"]) for h in body["hits"]], None
        raise RuntimeError(f"the service did not put user {user} in an experiment: {body.get('profile')}")

    def post_events(self, i: int, user: str, qid: str, text: str, shown: list[str], teams: Any, arm: Any,
                    clicked: list[int]) -> None:
        assert self._last is not None
        query_id, ids = self._last
        events = []
        if self.impressions:
            events += [_event("impression", query_id, user, d, p + 1) for p, d in enumerate(ids)]
        events += [_event("click", query_id, user, ids[p], p + 1, n) for n, p in enumerate(clicked)]
        if not events:
            return
        t = time.perf_counter()
        self._post(f"{self.url}/v1/events", {"events": events}, expect=202)
        self.events_ms.append((time.perf_counter() - t) * 1e3)
        self.events_sent += len(events)

    def _post(self, url: str, body: dict[str, Any], expect: int = 200) -> httpx.Response:
        for attempt in range(60):
            try:
                r = self.client.post(url, json=body)
            except httpx.TransportError:
                self.retries += 1
                time.sleep(min(0.1 * 2 ** attempt, 2.0))
                continue
            if r.status_code == expect:
                return r
            if r.status_code in (429, 503):
                self.retries += 1
                time.sleep(float(r.headers.get("Retry-After", "1")))
                continue
            raise RuntimeError(f"POST {url} answered {r.status_code}: {r.text[:300]}")
        raise RuntimeError(f"POST {url}: no answer after 60 tries")

    def report(self, experiment: str) -> dict[str, Any]:
        r = self.client.get(f"{self.url}/v1/experiments/{experiment}")
        r.raise_for_status()
        return r.json()

    def wait_counted(self, experiment: str, served: int, timeout_s: float = 120) -> dict[str, Any]:
        """The report once the consumer has applied ``served`` searches and the counts stopped moving."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            rep = self.report(experiment)
            if rep["served"] >= served and last is not None and _counts(rep) == _counts(last):
                return rep
            last = rep
            time.sleep(0.5)
        raise RuntimeError(f"experiment {experiment}: the consumer did not catch up within {timeout_s:.0f} s")


def _counts(rep: dict[str, Any]) -> Any:
    return (rep["served"], [(m["served"], m["clicks"], m.get("team_clicks")) for m in rep["arm_metrics"]],
            [(p["wins"], p["losses"], p["ties"]) for p in rep["pairs"]])


def _event(action: str, query_id: str, user: str, doc: str, rank: int, n: int = 0) -> dict[str, Any]:
    ev: dict[str, Any] = {"action_name": action, "query_id": query_id, "client_id": user,
                          "event_attributes": {"object": {"object_id": doc, "object_id_field": "_id"},
                                               "position": {"ordinal": rank}}}
    ev["event_id"] = f"{query_id}:{action}:{rank}:{n}"
    return ev
