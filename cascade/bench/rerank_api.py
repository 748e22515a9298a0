"""Benchmark of the rerank API (`cascade bench-rerank-api`, run by `make bench`): ``POST /v2/rerank`` beside
the same pairs ranked in-process, for 20, 100 and 1,000 documents a request.

The service is the app `cascade serve` runs, on uvicorn configured as `cascade serve` configures it, on
loopback, in a thread of this process; its default profile is the dataset's cross-encoder alone, every
document scored (what a rerank client asks for), the result cache off so every request computes. The
in-process path is what the route runs without HTTP, on the service's own opened profile (the same loaded
model): the same documents as candidates, :func:`cascade.service.rerank.core.ranking_view` and
``Cascade.rerank``. One process, so both paths get the same share of a machine that other work may load
(a separate server process was starved differently from the client in trials). Requests go one at a time,
interleaved with the in-process runs (alternating which goes first). Each request takes other documents
(the corpus in rotation) and another query.

A p95 is reported only from :data:`P95_MIN` requests or more (from fewer it is just the slowest one); a size
with fewer (1,000 documents take ~30 s a request on 2 cores, so they get a quarter of ``requests``) reports
its median and maximum only. The load average is recorded before and after: other work on the machine
slows both paths alike, but it widens the spread.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

from cascade.bench.common import BenchResult, head_lines, pct
from cascade.config import IndexConfig, parse_config
from cascade.query import Query
from cascade.settings import Settings

NAME = "rerank-bench"
P95_MIN = 20  # requests below which a "p95" is only the slowest request: the maximum is reported instead


@dataclass
class SizeResult:
    docs: int
    http_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # the service's own time (Server-Timing)
    inproc_ms: list[float] = field(default_factory=list)
    body_bytes: int = 0

    def docs_per_s(self, ms: list[float]) -> float:
        return self.docs / (pct(ms, 50) / 1e3) if ms else float("nan")

    def p95(self, ms: list[float]) -> str:
        """The 95th percentile in ms, or a dash when there are too few requests to have one."""
        return f"{pct(ms, 95):.0f}" if len(ms) >= P95_MIN else "—"


@dataclass
class RerankAPIBench(BenchResult):
    dataset: str
    model: str
    max_length: int
    sizes: list[SizeResult] = field(default_factory=list)
    loadavg: tuple[float, float, float] | None = None  # at the start
    loadavg_end: tuple[float, float, float] | None = None

    def table(self) -> Table:
        t = Table(title=f"/v2/rerank vs in-process, ms ({self.model}, {self.dataset})")
        for c in ("docs", "reqs", "HTTP p50", "p95", "max", "local p50", "p95", "max", "ratio"):
            t.add_column(c, justify="right")
        for s in self.sizes:
            t.add_row(str(s.docs), str(len(s.http_ms)), f"{pct(s.http_ms, 50):.0f}", s.p95(s.http_ms),
                      f"{max(s.http_ms):.0f}", f"{pct(s.inproc_ms, 50):.0f}", s.p95(s.inproc_ms),
                      f"{max(s.inproc_ms):.0f}", f"{pct(s.http_ms, 50) / pct(s.inproc_ms, 50):.2f}")
        return t

    def section(self) -> tuple[str, str]:
        return "rerank-api", "Rerank API: /v2/rerank beside the same pairs in-process"

    def markdown(self, command: str, machine: str) -> str:
        lines = head_lines(command, machine)
        if self.loadavg:
            end = f", at the end {self.loadavg_end[0]:.2f}" if self.loadavg_end else ""
            lines.append(f"Load average (1 min) at the start: {self.loadavg[0]:.2f}{end} (2 cores; other work shared "
                         f"the machine)  ")
        lines += [
            "",
            f"One request at a time to `POST /v2/rerank` of the service (uvicorn on loopback, in the benchmark's "
            f"process), whose profile is "
            f"the cross-encoder `{self.model}` alone (max_length {self.max_length}, every document scored, result "
            f"cache off), beside the same query and documents ranked in this process by the same profile "
            f"(`ranking_view` + `Cascade.rerank` on the service's own loaded profile), interleaved request by "
            f"request. Documents are {self.dataset} "
            f"abstracts (title and text), another slice and another test query each request. Latency in ms; "
            f"\"in the service\" is the route's own time (its `Server-Timing` header: the model lookup, the ranking, "
            f"the truncation count, no HTTP or JSON); documents per second at one request at a time (median); "
            f"ratio = HTTP median / in-process median. A p95 is given from {P95_MIN} requests up; with fewer, "
            f"\"—\" and the maximum (the slowest request) instead.",
            "",
            "| documents | requests | body | HTTP p50 | HTTP p95 | HTTP max | in the service p50 | in-process p50 | "
            "in-process p95 | in-process max | HTTP docs/s | in-process docs/s | ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in self.sizes:
            lines.append(
                f"| {s.docs} | {len(s.http_ms)} | {s.body_bytes / 1024:.0f} KiB | {pct(s.http_ms, 50):.0f} | "
                f"{s.p95(s.http_ms)} | {max(s.http_ms):.0f} | {pct(s.server_ms, 50):.0f} | "
                f"{pct(s.inproc_ms, 50):.0f} | {s.p95(s.inproc_ms)} | {max(s.inproc_ms):.0f} | "
                f"{s.docs_per_s(s.http_ms):.0f} | {s.docs_per_s(s.inproc_ms):.0f} | "
                f"{pct(s.http_ms, 50) / pct(s.inproc_ms, 50):.2f} |")
        gaps = ", ".join(f"{s.docs} documents {pct(s.http_ms, 50) - pct(s.server_ms, 50):.1f} ms" for s in self.sizes)
        lines += ["", f"HTTP and JSON (the body both ways, parsing, the response model) are the gap between \"HTTP\" "
                      f"and \"in the service\" (medians: {gaps}). The gap between \"in the service\" and "
                      f"in-process is what the service adds around the same ranking (admission, a worker "
                      f"thread, single-flight) plus run-to-run noise; the model's time dominates at every "
                      f"size."]
        cores = os.cpu_count() or 1
        if self.loadavg and min(self.loadavg[0], (self.loadavg_end or self.loadavg)[0]) > cores:
            lines += ["", f"The load average stayed above the machine's {cores} cores: other work took most of the "
                          f"CPU, so the absolute times are a shared machine's, several times an idle one's. Both "
                          f"paths ran interleaved in one process under the same load; the ratios are the "
                          f"comparison."]
        return "\n".join(lines)


def bench_config(stage: dict[str, Any]) -> IndexConfig:
    """A one-profile index whose default profile is ``stage`` (a cross-encoder config) scoring every document."""
    stage = {k: v for k, v in stage.items() if k not in ("rerank", "keep", "combine", "name", "enabled")}
    return parse_config({
        "index": NAME, "version": f"bench{int(time.time())}",
        "fields": {"title": {"type": "text"}, "text": {"type": "text"}},
        "embedder": {"model": "default", "max_length": 32},
        "retrievers": {"bm25": {"type": "bm25", "k": 10}},
        "fusion": {"method": "rrf", "keep": 10},
        "stages": [stage], "cache": {"enabled": False},
    }, f"{NAME}.yaml")


def run(stage: dict[str, Any], settings: Settings, dataset: str, queries: list[str], docs: list[dict[str, Any]],
        *, sizes: list[int], requests: int, on_step: Callable[[str], None] = lambda s: None,
        on_progress: Callable[[int, int], None] = lambda done, total: None) -> RerankAPIBench:
    """``requests`` requests per size (fewer for 1,000 documents and more: a quarter, at least 5)."""
    import httpx
    import uvicorn

    from cascade.bench.load import free_port
    from cascade.config import dump_config
    from cascade.service import create_app, server_config
    from cascade.service.registry import ConfigSource
    from cascade.service.rerank.core import DocumentFields, RerankCall, build_candidates, ranking_view
    from connectors.embedded import build_index

    cfg = bench_config(stage)
    res = RerankAPIBench(dataset, str(stage.get("model")), int(stage.get("max_length", 256)))
    res.loadavg = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="cascade-rerank-bench-"))
    # One request at a time, however long: no timeout, no queue (CASCADE_RERANK_TIMEOUT_S raised).
    local = settings.model_copy(update={"index_dir": tmp / "indexes", "rerank_default_model": NAME,
                                        "rerank_timeout_s": 3600.0})
    texts = [" ".join(p for p in (d.get("title"), d.get("text")) if p) for d in docs]
    plan = [(n, max(5, requests // 4) if n >= 1000 else requests) for n in sizes]
    total, done = sum(r for _, r in plan), 0
    server = thread = None
    try:
        on_step("building the benchmark's index (20 documents: the profile's container; requests bring their own)")
        build_index(cfg, ((i + 1, dict(d)) for i, d in enumerate(docs[:20])), local, source=dataset)
        (tmp / "configs").mkdir()
        (tmp / "configs" / f"{NAME}.yaml").write_text(dump_config(cfg))
        app = create_app(local, ConfigSource(directory=tmp / "configs"))
        port = free_port()
        server = uvicorn.Server(server_config(app, "127.0.0.1", port, local, access_log=False, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        on_step(f"serving on {base} (uvicorn, configured as `cascade serve`); waiting for the index")
        with httpx.Client(timeout=600) as http, asyncio.Runner() as runner:
            deadline = time.monotonic() + 600
            while True:
                try:
                    if http.get(base + "/readyz").json()["status"] == "ready":
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError("the benchmark's service did not become ready")
                time.sleep(0.2)
            entry = app.state.service.registry.entries[NAME]
            assert entry.opened is not None
            casc = entry.opened.cascade()  # the service's own: same loaded model, same threads
            df = DocumentFields.of(casc)

            async def local_rank(query: str, batch: list[str]) -> None:
                cands = build_candidates(RerankCall(NAME, query, batch), df)
                await ranking_view(casc, len(batch)).rerank(casc.validate(Query(query, size=1)), cands)

            def post(query: str, batch: list[str]) -> httpx.Response:
                r = http.post(f"{base}/v2/rerank", json={"model": NAME, "query": query, "documents": batch})
                r.raise_for_status()
                return r

            on_step("warm-up: one request each way")
            post(queries[0], texts[:20])
            runner.run(local_rank(queries[0], texts[:20]))
            k = 1
            for n, count in plan:
                s = SizeResult(n)
                on_step(f"{n} documents: {count} requests through HTTP and in-process, interleaved")
                for i in range(count):
                    query = queries[k % len(queries)]
                    start = (k * 97) % max(1, len(texts) - n)
                    batch = (texts[start:] + texts)[:n]
                    k += 1
                    for path in (("http", "local") if i % 2 == 0 else ("local", "http")):
                        t = time.perf_counter()
                        if path == "local":
                            runner.run(local_rank(query, batch))
                            s.inproc_ms.append((time.perf_counter() - t) * 1e3)
                        else:
                            r = post(query, batch)
                            s.http_ms.append((time.perf_counter() - t) * 1e3)
                            s.server_ms.append(float(r.headers["server-timing"].split("dur=")[1]))
                    s.body_bytes = len(json.dumps({"model": NAME, "query": query, "documents": batch}).encode())
                    done += 1
                    on_progress(done, total)
                res.sizes.append(s)
            res.loadavg_end = os.getloadavg()
    finally:
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return res
