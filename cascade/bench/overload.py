"""Benchmark of admission under overload (`cascade bench-overload`, run by `make bench`).

`cascade serve` on 127.0.0.1, once per admission policy, one after the other
on the same machine with the same queries: policy A is the service's
admission (a request expected to wait longer than CASCADE_MAX_QUEUE_WAIT_S,
its budget or the search timeout gets 503 with Retry-After at once), policy B
only queues (CASCADE_MAX_QUEUE_WAIT_S=3600: the bounded queue of before, as the
baseline). The index's cache is off in the benchmark's config copy, so every
request is an uncached search (no Redis needed, nothing answered from memory).

At each level N closed-loop clients (asyncio + httpx, one connection each)
POST distinct query texts for a fixed duration; a client that gets 503 sleeps
for its Retry-After (at most the time left) and goes on. Requests in flight at
the end are waited for, so every request started has an outcome. Everything
runs on loopback and stops by itself: bounded durations, bounded waits, the
service stopped at the end of its policy.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.table import Table

from cascade.bench.common import BenchResult, head_lines, pct
from cascade.bench.load import metric, serve_process, stop, wait_for
from cascade.bench.serve import _plan, cheap_config as _serve_cheap_config
from cascade.config import IndexConfig
from cascade.plots import save_figure
from cascade.settings import Settings

QUEUE_ONLY_WAIT_S = 3600.0  # policy B: the largest CASCADE_MAX_QUEUE_WAIT_S, so only the queue bound turns away


def cheap_config(cfg: IndexConfig, with_cross_encoder: bool) -> IndexConfig:
    """bench-serve's copy of the config (its own version, cross-encoders only when asked) with every cache off.

    With the result cache off every request is computed (and no two share a
    computation: single-flight keys on the cache key); with the pair-score
    cache off repeated texts cost the cross-encoder again.
    """
    cfg = _serve_cheap_config(cfg, with_cross_encoder)
    return cfg.model_copy(update={"cache": cfg.cache.model_copy(update={"enabled": False, "pair_scores": False})})


@dataclass
class Policy:
    """One admission policy: the service's CASCADE_MAX_* settings for a run."""

    name: str
    label: str
    max_concurrent: int
    max_queued: int
    max_queue_wait_s: float

    def env(self) -> dict[str, str | None]:
        return {"CASCADE_MAX_CONCURRENT_SEARCHES": str(self.max_concurrent),
                "CASCADE_MAX_QUEUED_SEARCHES": str(self.max_queued),
                "CASCADE_MAX_QUEUE_WAIT_S": f"{self.max_queue_wait_s:g}"}

    def describe(self) -> str:
        return (f"CASCADE_MAX_CONCURRENT_SEARCHES={self.max_concurrent}, CASCADE_MAX_QUEUED_SEARCHES={self.max_queued}, "
                f"CASCADE_MAX_QUEUE_WAIT_S={self.max_queue_wait_s:g}")


def default_policies(settings: Settings) -> list[Policy]:
    """A: the configured admission (2 s wait by default); B: the same slots and queue, waiting allowed (3600 s)."""
    c, q = settings.max_concurrent_searches, settings.max_queued_searches
    return [Policy("A", f"admission (wait <= {settings.max_queue_wait_s:g} s)", c, q, settings.max_queue_wait_s),
            Policy("B", "queue only", c, q, QUEUE_ONLY_WAIT_S)]


@dataclass
class Level:
    """What N clients got from one policy in one timed run."""

    policy: str
    clients: int
    duration_s: float
    wall_s: float = 0.0  # from the first request to the last answer (the in-flight ones included)
    ok_ms: list[float] = field(default_factory=list)  # 200s
    rejected_ms: list[float] = field(default_factory=list)  # 503s with Retry-After (admission)
    all_ms: list[float] = field(default_factory=list)  # every request, whatever its outcome
    rejected_wait: int = 0  # 503: the expected wait was longer than the request could wait
    rejected_full: int = 0  # 503: the queue was full
    other: dict[str, int] = field(default_factory=dict)  # other statuses and transport errors, by kind
    retry_after_s: list[float] = field(default_factory=list)
    server_rejected: int | None = None  # the service's own cascade_overload_rejections_total during the run

    @property
    def requests(self) -> int:
        return len(self.all_ms)

    @property
    def ok(self) -> int:
        return len(self.ok_ms)

    @property
    def rejected(self) -> int:
        return len(self.rejected_ms)

    @property
    def errors(self) -> int:
        return sum(self.other.values())

    @property
    def rejected_share(self) -> float:
        return self.rejected / self.requests if self.requests else 0.0

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class OverloadBench(BenchResult):
    index: str
    cascade: str
    queries: int
    duration_s: float
    client_timeout_s: float
    search_timeout_s: float
    policies: list[Policy] = field(default_factory=list)
    levels: list[Level] = field(default_factory=list)
    alone_ms: dict[str, list[float]] = field(default_factory=dict)  # per policy: sequential searches, client-timed
    alone_took_ms: dict[str, list[float]] = field(default_factory=dict)  # the same, the service's took_ms
    loadavg_start: tuple[float, float, float] | None = None
    loadavg_end: tuple[float, float, float] | None = None

    def level(self, policy: str, clients: int) -> Level:
        return next(x for x in self.levels if x.policy == policy and x.clients == clients)

    def tables(self) -> list[Table]:
        """Outcomes per policy and level, then latencies (two tables: each fits 80 columns)."""
        return _tables(self)

    def table(self) -> Table:
        return _tables(self)[0]

    def section(self) -> tuple[str, str]:
        return f"overload-{self.index}", "HTTP service under overload: admission (503 + Retry-After) against queueing"

    def markdown(self, command: str, machine: str, image: str | None = None) -> str:
        return markdown(self, command, machine, image)


def _kind_of_503(body: bytes) -> str:
    """"full" (the queue bound) or "wait" (the expected wait): the service's message says which."""
    try:
        msg = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return "wait"
    return "full" if " waiting (the limits are " in msg else "wait"


async def client_load(url: str, bodies: list[bytes], clients: int, duration_s: float, timeout_s: float,
                      policy: str = "") -> Level:
    """``clients`` closed-loop clients for ``duration_s``; each request takes the next body (cycling)."""
    import httpx

    lv = Level(policy, clients, duration_s)
    order = itertools.count()  # one sequence for all clients: texts in flight together are distinct
    headers = {"Content-Type": "application/json"}
    deadline = time.perf_counter() + duration_s

    async def one_client() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as http:
            while time.perf_counter() < deadline:
                body = bodies[next(order) % len(bodies)]
                t = time.perf_counter()
                pause, kind = 0.0, ""
                try:
                    r = await http.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    ms = (time.perf_counter() - t) * 1e3
                    kind = type(exc).__name__
                    pause = 0.2  # a refused or broken connection: do not spin
                else:
                    ms = (time.perf_counter() - t) * 1e3
                    if r.status_code == 200:
                        lv.ok_ms.append(ms)
                    elif r.status_code == 503 and "retry-after" in r.headers:
                        lv.rejected_ms.append(ms)
                        if _kind_of_503(r.content) == "full":
                            lv.rejected_full += 1
                        else:
                            lv.rejected_wait += 1
                        try:
                            pause = float(r.headers["retry-after"])
                        except ValueError:
                            pause = 1.0
                        lv.retry_after_s.append(pause)
                    else:
                        kind = str(r.status_code)
                lv.all_ms.append(ms)
                if kind:
                    lv.other[kind] = lv.other.get(kind, 0) + 1
                left = deadline - time.perf_counter()
                if pause > 0 and left > 0:
                    await asyncio.sleep(min(pause, left))

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    lv.wall_s = time.perf_counter() - t0
    return lv


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run(cfg: IndexConfig, settings: Settings, queries: list[str], *, clients: list[int], duration_s: float,
        policies: list[Policy] | None = None, alone: int = 10, size: int = 10,
        on_step: Callable[[str], None] = lambda s: None) -> OverloadBench:
    """Each policy in its own ``cascade serve`` (one after the other): searches alone, then every client level."""
    import httpx

    texts = list(dict.fromkeys(q.strip() for q in queries if q.strip()))
    if not texts:
        raise ValueError("no query texts to send")
    policies = policies or default_policies(settings)
    timeout_s = settings.search_timeout_s + 10
    res = OverloadBench(cfg.index, _plan(cfg), len(texts), duration_s, timeout_s, settings.search_timeout_s,
                        policies=list(policies))
    res.loadavg_start = os.getloadavg()
    bodies = [json.dumps({"query": t, "size": size}).encode() for t in texts]
    headers = {"Content-Type": "application/json"}
    for pol in policies:
        tmp = Path(tempfile.mkdtemp(prefix="cascade-bench-overload-"))
        service = None
        try:
            # No Redis: the config's cache is off, and the in-process one would not be asked either.
            service, base = serve_process(cfg, settings, tmp, {**pol.env(), "CASCADE_REDIS_URL": None},
                                          on_step=lambda s, p=pol: on_step(f"policy {p.name} ({p.label}): {s}"))
            url = f"{base}/v1/indexes/{cfg.index}/search"
            with httpx.Client(timeout=timeout_s) as http:
                on_step(f"policy {pol.name}: {min(alone, len(texts))} searches one at a time (after one warm-up)")
                http.post(url, content=bodies[-1], headers=headers).raise_for_status()  # first-request costs
                ms, took = res.alone_ms.setdefault(pol.name, []), res.alone_took_ms.setdefault(pol.name, [])
                for b in bodies[::-1][1:alone + 1] or bodies[-1:]:
                    t = time.perf_counter()
                    r = http.post(url, content=b, headers=headers)
                    ms.append((time.perf_counter() - t) * 1e3)
                    r.raise_for_status()
                    took.append(r.json()["took_ms"])
                for n in clients:
                    on_step(f"policy {pol.name}: {n} clients, {duration_s:g} s")
                    before = metric(http.get(base + "/metrics").text, "cascade_overload_rejections_total",
                                    index=cfg.index)
                    lv = asyncio.run(client_load(url, bodies, n, duration_s, timeout_s, pol.name))
                    # A request a client gave up on (its timeout) is still computed: let the service drain.
                    wait_for(lambda: _gauge(http.get(base + "/metrics").text, "cascade_searches_in_flight") == 0,
                             timeout_s, "the service to finish the searches in flight")
                    after = metric(http.get(base + "/metrics").text, "cascade_overload_rejections_total",
                                   index=cfg.index)
                    lv.server_rejected = int(after - before)
                    res.levels.append(lv)
            stop(service)
            service = None
        finally:
            stop(service)
            shutil.rmtree(tmp, ignore_errors=True)
    res.loadavg_end = os.getloadavg()
    return res


def _s(ms: float) -> str:
    return f"{ms / 1e3:.2f}" if ms == ms else "-"


def _ms(ms: float) -> str:
    return f"{ms:.0f}" if ms == ms else "-"


def _tables(r: OverloadBench) -> list[Table]:
    alone = "; ".join(f"{p}: {pct(v, 50):.0f} ms" for p, v in r.alone_ms.items())
    t = Table(title=f"overload, {r.index}: outcomes per {r.duration_s:g} s run (cache off)",
              caption=f"one uncached search alone, median: {alone or '-'}")
    for c in ("policy", "clients", "requests", "200", "503", "503 share", "other", "200/s"):
        t.add_column(c, justify="right")
    for x in r.levels:
        t.add_row(x.policy, str(x.clients), str(x.requests), str(x.ok), str(x.rejected), f"{x.rejected_share:.1%}",
                  str(x.errors), f"{x.ok_per_s:.2f}")
    u = Table(title="latency: 200s in s, 503s in ms")
    for c in ("policy", "clients", "p50 200", "p95 200", "p99 200", "p99 all", "p99 503 ms"):
        u.add_column(c, justify="right")
    for x in r.levels:
        u.add_row(x.policy, str(x.clients), _s(pct(x.ok_ms, 50)), _s(pct(x.ok_ms, 95)), _s(pct(x.ok_ms, 99)),
                  _s(pct(x.all_ms, 99)), _ms(pct(x.rejected_ms, 99)))
    return [t, u]


def _compare(r: OverloadBench, a: Policy, b: Policy) -> list[str]:
    """One sentence per level, from the numbers: what admission changed against queueing."""
    out = []
    for n in sorted({x.clients for x in r.levels}):
        try:
            la, lb = r.level(a.name, n), r.level(b.name, n)
        except StopIteration:
            continue
        out.append(f"- {n} clients: p99 of the 200s {_s(pct(la.ok_ms, 99))} s with {a.name} against "
                   f"{_s(pct(lb.ok_ms, 99))} s with {b.name}; {a.name} turned away {la.rejected_share:.1%} "
                   f"({la.rejected_wait} for the expected wait, {la.rejected_full} for a full queue), {b.name} "
                   f"{lb.rejected_share:.1%} ({lb.rejected_wait} for the expected wait, {lb.rejected_full} for a full "
                   f"queue); answers per second {la.ok_per_s:.2f} against {lb.ok_per_s:.2f}.")
    return out


def markdown(r: OverloadBench, command: str, machine: str, image: str | None = None) -> str:
    la = lambda x: ", ".join(f"{v:.1f}" for v in x) if x else "?"  # noqa: E731
    lines = [
        *head_lines(command, machine),
        f"Load average (1, 5, 15 min) at start: {la(r.loadavg_start)}; at the end: {la(r.loadavg_end)} "
        "(the load generator shares the cores with the service)  ",
        f"Service: `cascade serve` on 127.0.0.1, one uvicorn process per policy, started one after the other  ",
        f"Cascade `{r.index}`: {r.cascade}; the benchmark's copy of the config has `cache.enabled: false` (and no "
        "pair-score cache), so every request is an uncached search and no two share a computation  ",
    ]
    for p in r.policies:
        ms, took = r.alone_ms.get(p.name, []), r.alone_took_ms.get(p.name, [])
        lines.append(f"One uncached search alone (policy {p.name}'s service, {len(ms)} queries one at a time after a "
                     f"warm-up): median {pct(ms, 50):.0f} ms through HTTP ({pct(took, 50):.0f} ms took_ms), "
                     f"max {max(ms, default=float('nan')):.0f} ms  ")
    lines += ["", "Policies (the same slots and queue bound; only the wait limit differs):", ""]
    for p in r.policies:
        lines.append(f"- **{p.name}, {p.label}**: {p.describe()}")
    lines += [
        "",
        f"Clients: closed loop, asyncio + httpx in one process, one connection each, timeout "
        f"{r.client_timeout_s:g} s (the search timeout, {r.search_timeout_s:g} s, plus 10); each request POSTs the "
        f"next of {r.queries} distinct query texts (size 10; the same sequence for both policies); after a 503 a "
        f"client sleeps for its Retry-After (at most the time left). Each level runs {r.duration_s:g} s, then the "
        "requests in flight are waited for ('200/s' divides by that whole time). 'p99 all' is over every request, "
        "whatever its outcome; 'other' counts any other status or transport error.", "",
        "| policy | clients | requests | 200 | 503 | 503 share | other | p50 200 s | p95 200 s | p99 200 s | "
        "p99 all s | p99 503 ms | 200/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in r.levels:
        other = str(x.errors) + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(x.other.items()))})" if x.other else "")
        lines.append(f"| {x.policy} | {x.clients} | {x.requests} | {x.ok} | {x.rejected} | {x.rejected_share:.1%} | "
                     f"{other} | {_s(pct(x.ok_ms, 50))} | {_s(pct(x.ok_ms, 95))} | {_s(pct(x.ok_ms, 99))} | "
                     f"{_s(pct(x.all_ms, 99))} | {_ms(pct(x.rejected_ms, 99))} | {x.ok_per_s:.2f} |")
    if len(r.policies) >= 2:
        lines += ["", *_compare(r, r.policies[0], r.policies[1])]
    if image:
        lines += ["", f"![p99 latency and 503 share against clients]({image})"]
    lines.append("")
    return "\n".join(lines)


def plot(r: OverloadBench, path: Path) -> Path:
    """p99 latency (of the 200s) and the 503 share against clients, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for p, color in zip(r.policies, itertools.cycle(["#1f77b4", "#d62728", "#2ca02c", "#7f7f7f"])):
        lv = sorted((x for x in r.levels if x.policy == p.name), key=lambda x: x.clients)
        n = [x.clients for x in lv]
        ax1.plot(n, [pct(x.ok_ms, 99) / 1e3 for x in lv], "-o", color=color, label=f"{p.name}: {p.label}")
        ax2.plot(n, [100 * x.rejected_share for x in lv], "-o", color=color, label=f"{p.name}: {p.label}")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({x.clients for x in r.levels}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_ylabel("p99 latency of answered searches (s)")
    ax1.set_ylim(bottom=0)
    ax2.set_ylabel("503 share of requests (%)")
    ax2.set_ylim(0, 100)
    fig.suptitle(f"{r.index}: uncached searches under overload ({r.duration_s:g} s per level)")
    return save_figure(fig, path)
