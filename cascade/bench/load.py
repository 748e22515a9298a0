"""Load generation and process plumbing for the HTTP service benchmarks (:mod:`cascade.bench.serve`, ``overload``).

``cascade serve`` for one index on a free loopback port, a throw-away
redis-server, wrk (with a Lua script that POSTs a list of bodies) or a small
asyncio/httpx generator when wrk is missing, CPU time of a process
from /proc, and one counter read from the service's Prometheus metrics. Every
wait is bounded and every child process is stopped by whoever started it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cascade.config import IndexConfig, dump_config
from cascade.errors import CascadeError
from cascade.settings import Settings


@dataclass
class LoadResult:
    tool: str
    concurrency: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    hits: int = 0  # cache hits the service counted during the run
    service_cpu_us: float | None = None  # CPU time of the service process per request (contention-free cost)
    redis_cpu_us: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise CascadeError(f"benchmark: timed out after {timeout_s:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def serve_process(cfg: IndexConfig, settings: Settings, tmp: Path, env_extra: dict[str, str | None] | None = None,
                  on_step: Callable[[str], None] = lambda s: None,
                  ready_timeout_s: float = 600) -> tuple[subprocess.Popen, str]:
    """``cascade serve`` for ``cfg`` alone on a free loopback port, ready: ``(process, base URL)``.

    The config goes to ``tmp/configs`` (the service reads it from there), its
    stderr to ``tmp/serve.log``. The child gets this process's environment with
    the index, trained and models folders of ``settings``, then ``env_extra``
    (a None value removes the variable). The caller stops it (:func:`stop`);
    when it does not become ready, it is stopped here and CascadeError says why.
    """
    import httpx

    env = {**os.environ, "CASCADE_INDEX_DIR": str(settings.index_dir), "CASCADE_TRAINED_DIR": str(settings.trained_dir),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    if settings.models_dir:
        env["CASCADE_MODELS_DIR"] = str(settings.models_dir)
    for k, v in (env_extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    (tmp / "configs").mkdir(exist_ok=True)
    (tmp / "configs" / f"{cfg.index}.yaml").write_text(dump_config(cfg))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    on_step(f"starting cascade serve on {base}")
    with open(tmp / "serve.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cascade.cli", "serve", "--host", "127.0.0.1", "--port",
                                 str(port), "--index-config", str(tmp / "configs"), "--no-access-log"],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)

    def ready() -> bool:
        if proc.poll() is not None:
            log_tail = (tmp / "serve.log").read_text()[-2000:]
            raise CascadeError(f"cascade serve exited with {proc.returncode}: {log_tail}")
        try:
            r = httpx.get(base + "/readyz", timeout=2).json()
        except httpx.HTTPError:
            return False
        if r["status"] == "unavailable":
            raise CascadeError(f"index {cfg.index} cannot be served: {r['indexes'][cfg.index]['error']}")
        return r["status"] == "ready"

    try:
        wait_for(ready, ready_timeout_s, "the service to be ready")
    except BaseException:
        stop(proc)
        raise
    return proc, base


def start_redis(folder: Path) -> tuple[subprocess.Popen, str, str] | None:
    """A throw-away redis-server on a free loopback port, or None when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_for(up, 15, "redis-server")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()
    v = next((w.split("=", 1)[1] for w in version if w.startswith("v=")), "?")
    return proc, f"redis://127.0.0.1:{port}/0", v


def _unit_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def parse_wrk(out: str) -> tuple[int, float, float, float, int]:
    """(requests, requests/s, p50 ms, p99 ms, non-2xx + socket errors) from `wrk --latency` output."""
    reqs = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {m.group(1): _unit_ms(m.group(2)) for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return reqs, rps, pct["50"], pct["99"], errors


def wrk_script(bodies: list[str], path: Path) -> Path:
    """A Lua script for wrk that POSTs ``bodies`` in turn (wrk alone only GETs one URL)."""
    def lua(s: str) -> str:
        level = 0
        while f"]{'=' * level}]" in s:
            level += 1
        return f"[{'=' * level}[{s}]{'=' * level}]"

    path.write_text("wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
                    f"local bodies = {{{', '.join(lua(b) for b in bodies)}}}\nlocal i = 0\n"
                    "request = function()\n  i = i % #bodies + 1\n  return wrk.format(nil, nil, nil, bodies[i])\nend\n")
    return path


def run_wrk(url: str, script: Path, concurrency: int, duration_s: int) -> LoadResult:
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60).stdout
    reqs, rps, p50, p99, errors = parse_wrk(out)
    return LoadResult("wrk", concurrency, duration_s, reqs, rps, p50, p99, errors)


async def py_load(url: str, bodies: list[bytes], concurrency: int, duration_s: float) -> LoadResult:
    import httpx

    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        deadline = time.perf_counter() + duration_s

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await client.post(url, content=bodies[i % len(bodies)], headers={"Content-Type": "application/json"})
                lat.append((time.perf_counter() - t) * 1e3)
                errors += r.status_code != 200
                i += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        took = time.perf_counter() - t0
    return LoadResult("python (asyncio + httpx)", concurrency, duration_s, len(lat), len(lat) / took,
                      float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), errors)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None where it cannot be read."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0
