"""The experiment benchmarks behind ``cascade experiments simulate|fidelity|peeking|bench-durability|bench-latency``.

Each returns a result that renders its terminal table and its section of
docs/benchmarks.md (with the command and the machine), like every benchmark.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

from cascade.bench.common import BenchResult, head_lines, pct
from cascade.plots import save_figure


def _n(x: Any) -> str:
    return "-" if x is None else f"{x:,}" if isinstance(x, int) else str(x)


# ---------------------------------------------------------------- sensitivity (simulate)


@dataclass
class SensitivityResult(BenchResult):
    dataset: str
    split: str
    arms: list[str]
    user: str
    offline: dict[str, float]
    queries: int
    ab: dict[str, Any]
    interleave: dict[str, Any]
    http: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def ratio(self) -> float | None:
        a, i = self.ab.get("impressions_to_significance"), self.interleave.get("impressions_to_significance")
        return a / i if a and i else None

    def as_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "arms": self.arms, "user": self.user,
                "offline_ndcg@10": self.offline, "queries": self.queries, "ab": self.ab, "interleave": self.interleave,
                "ab_over_interleave": self.ratio(), "http": self.http, "settings": self.settings,
                "seconds": round(self.seconds, 1)}

    def table(self) -> Table:
        t = Table(title=f"{self.dataset} {self.split}: {self.arms[0]} vs {self.arms[1]} ({self.user} users), "
                        f"impressions to p < 0.05", caption=f"A/B / interleaving: {self.ratio() or 0:.1f}x",
                  caption_justify="left")
        t.add_column("mode")
        for c in ("80% (any-time)", "median", "fixed 80%", "seeds", "reached"):
            t.add_column(c, justify="right", no_wrap=True)
        for name, r in (("A/B", self.ab), ("interleave", self.interleave)):
            t.add_row(name, _n(r["impressions_to_significance"]), _n(r["median_stopping"]),
                      _n(r["fixed_horizon_impressions_80"]), str(r["seeds"]), f"{r['reached_within_cap']:.0%}")
        return t

    def section(self) -> tuple[str, str]:
        return f"experiments-sensitivity-{self.dataset}", f"Experiments: A/B against interleaving on {self.dataset}"

    def markdown(self, command: str, machine: str) -> str:
        s = self.settings
        lines = [*head_lines(command, machine),
                 f"{self.queries} judged {self.dataset} {self.split} queries; arms `{self.arms[0]}` (offline nDCG@10 "
                 f"{self.offline[self.arms[0]]:.4f}) and `{self.arms[1]}` ({self.offline[self.arms[1]]:.4f}); "
                 f"{self.user} cascade users (click and stop probabilities by grade as in the online LTR "
                 f"literature); each impression a random query and a new user; A/B on {s.get('metric', 'clicks')} "
                 f"per impression (normal mixture SPRT), interleaving by team draft (Beta-mixture sign test); "
                 f"{s.get('seeds')} seeds, a look every {s.get('look_every')} impressions, at most "
                 f"{s.get('max_impressions'):,} per seed. {self.seconds:.0f} s in all.", "",
                 "| mode | impressions to always-valid p < 0.05, 80% of seeds | median seed | fixed-horizon test: "
                 "impressions for 80% power | seeds significant within the cap | significant seeds picking the "
                 "offline winner |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in (("A/B (per-impression clicks)", self.ab), ("team-draft interleaving", self.interleave)):
            lines.append(f"| {name} | {_n(r['impressions_to_significance'])} | {_n(r['median_stopping'])} | "
                         f"{_n(r['fixed_horizon_impressions_80'])} | {r['reached_within_cap']:.0%} | "
                         f"{r['correct_direction']:.0%} |")
        ratio = self.ratio()
        lines += ["", f"**Interleaving needs {ratio:.1f}x fewer impressions than A/B** (target: at least 10x)."
                  if ratio else "**Ratio not measured**: a mode did not reach significance in 80% of seeds.", ""]
        h = self.http
        if h:
            lines += [f"Through the real service (`cascade serve` in its own process, Redis {h.get('redis')}): "
                      f"{h.get('impressions'):,} impressions of seeds {h.get('seeds')} replayed over HTTP "
                      f"(search, then an impression event per hit and the clicks): "
                      f"{h.get('searches_per_s', 0):.0f} searches/s with {h.get('events_per_s', 0):.0f} events/s; "
                      f"search p50 {h.get('search_p50_ms', 0):.1f} ms, p99 {h.get('search_p99_ms', 0):.1f} ms; "
                      f"events POST p50 {h.get('events_p50_ms', 0):.1f} ms, p99 {h.get('events_p99_ms', 0):.1f} ms. "
                      f"The service's aggregates equal the in-process tally of the same seeds: "
                      f"**{'yes' if h.get('match') else 'NO'}** ({h.get('detail', '')}).", ""]
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, r, color in (("A/B", self.ab, "tab:orange"), ("interleaving", self.interleave, "tab:blue")):
            stops = sorted(s for s in r["stopping"] if s is not None)
            n = len(r["stopping"])
            if stops:
                xs = [0, *stops]
                ys = [0, *[(i + 1) / n for i in range(len(stops))]]
                ax.step(xs, ys, where="post", label=f"{name} (always-valid)", color=color)
            q = r.get("impressions_to_significance")
            if q:
                ax.axvline(q, color=color, ls=":", lw=1)
        ax.axhline(0.8, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("impressions")
        ax.set_ylabel("share of seeds significant (p < 0.05)")
        ax.set_title(f"{self.dataset}: {self.arms[0]} vs {self.arms[1]}, {self.user} users", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        return save_figure(fig, path, dpi=120)


# ---------------------------------------------------------------- fidelity and multileaving


@dataclass
class FidelityResult(BenchResult):
    dataset: str
    split: str
    arms: list[str]
    offline: dict[str, float]
    users: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "arms": self.arms, "offline_ndcg@10": self.offline,
                "users": self.users, "settings": self.settings, "seconds": round(self.seconds, 1)}

    def table(self) -> Table:
        t = Table(title=f"{self.dataset}: interleaving agrees with offline nDCG@10 (share of seeds)")
        t.add_column("user")
        t.add_column("worst pair", justify="right", no_wrap=True)
        t.add_column("multi", justify="right", no_wrap=True)
        t.add_column("pairwise imp.", justify="right", no_wrap=True)
        t.add_column("multi imp.", justify="right", no_wrap=True)
        for u in self.users:
            worst = min((p["agreement"] for p in u["pairs"]), default=math.nan)
            t.add_row(u["user"], f"{worst:.1%}", f"{u['multileave_all_pairs_right']:.1%}",
                      _n(u["pairwise_impressions_95_total"]), _n(u["multileave_impressions_95"]))
        return t

    def section(self) -> tuple[str, str]:
        return f"experiments-fidelity-{self.dataset}", f"Experiments: does interleaving pick the offline winner? ({self.dataset})"

    def markdown(self, command: str, machine: str) -> str:
        s = self.settings
        off = ", ".join(f"`{a}` {self.offline[a]:.4f}" for a in self.arms)
        lines = [*head_lines(command, machine),
                 f"Profiles (offline nDCG@10 on {self.dataset} {self.split}): {off}. Pairs at least "
                 f"{s.get('min_delta')} apart offline; {s.get('seeds')} seeds of {s.get('impressions'):,} "
                 f"impressions per run and user type. {self.seconds:.0f} s in all.", ""]
        for u in self.users:
            lines += [f"**{u['user']} users**", "",
                      "| pair | offline Δ | team draft: seeds agreeing | impressions for 95% | multileave: seeds "
                      "agreeing | impressions for 95% |", "|---|---:|---:|---:|---:|---:|"]
            multi = {(r["a"], r["b"]): r for r in u["multileave"]}
            for p in u["pairs"]:
                m = multi[(p["a"], p["b"])]
                lines.append(f"| {p['a']} vs {p['b']} | {p['offline_delta']:+.4f} | {p['agreement']:.1%} | "
                             f"{_n(p['impressions_95'])} | {m['agreement']:.1%} | {_n(m['impressions_95'])} |")
            tot, mul = u["pairwise_impressions_95_total"], u["multileave_impressions_95"]
            equal = u.get("pairwise_impressions_95_equal_runs")
            n_pairs, cap = len(u["pairs"]), f"more than {u['impressions']:,} (not reached)"
            lines += ["", f"Impressions for every pair to agree with offline nDCG@10 in 95% of seeds: "
                          f"{n_pairs} separate interleaving runs need {_n(tot) if tot else cap} in all when each "
                          f"stops where it got there (known only in hindsight), or {_n(equal) if equal else cap} "
                          f"as {n_pairs} runs of equal length; one multileaved run of all {len(self.arms)} needs "
                          f"{_n(mul) if mul else cap}"
                          + (f" ({mul / tot:.2f} and {mul / equal:.2f} of them; target at most 0.5)"
                             if mul and tot and equal else " (target: at most half of the pairwise runs)")
                          + f". Every pair right at once in the multileaved run: "
                          f"{u['multileave_all_pairs_right']:.1%} of seeds at {u['impressions']:,} impressions.", ""]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- peeking (A/A)


@dataclass
class PeekingResult(BenchResult):
    dataset: str
    profile: str
    user: str
    rows: list[dict[str, Any]]
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "profile": self.profile, "user": self.user, "rows": self.rows}

    def table(self) -> Table:
        t = Table(title=f"A/A experiments on {self.dataset} ({self.profile} vs itself): false positives")
        t.add_column("mode")
        for c in ("runs", "looks", "always-valid", "fixed, peeking"):
            t.add_column(c, justify="right", no_wrap=True)
        for r in self.rows:
            t.add_row(r["mode"], str(r["runs"]), str(r["looks"]), f"{r['always_valid_fpr']:.1%}",
                      f"{r['fixed_test_peeking_fpr']:.1%}")
        return t

    def section(self) -> tuple[str, str]:
        return f"experiments-peeking-{self.dataset}", "Experiments: peeking at A/A tests"

    def markdown(self, command: str, machine: str) -> str:
        lines = [*head_lines(command, machine),
                 f"Both arms `{self.profile}` on {self.dataset}; {self.user} users; each run checked every "
                 f"{self.rows[0]['look_every']} impressions. False-positive rate: runs that ever showed p < 0.05 "
                 f"(target: at most 5% for the always-valid tests). {self.seconds:.0f} s in all.", "",
                 "| mode | runs | impressions per run | looks | always-valid test | fixed test at every look |",
                 "|---|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r['mode']} | {r['runs']} | {r['impressions']:,} | {r['looks']} | "
                         f"{r['always_valid_fpr']:.1%} | {r['fixed_test_peeking_fpr']:.1%} |")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- durability


@dataclass
class DurabilityResult(BenchResult):
    rows: list[dict[str, Any]]
    events: int
    seconds: float = 0.0

    def table(self) -> Table:
        t = Table(title=f"{self.events} events through restarts: acknowledged vs counted")
        for c in ("appendfsync", "fault", "acked", "counted", "lost", "dupes"):
            t.add_column(c, justify="right" if c not in ("appendfsync", "fault") else "left", no_wrap=True)
        for r in self.rows:
            t.add_row(r["appendfsync"], r["fault"], str(r["acknowledged"]), str(r["counted"]), str(r["lost"]),
                      str(r["duplicates"]))
        return t

    def section(self) -> tuple[str, str]:
        return "experiments-durability", "Experiments: events through Redis restarts and consumer crashes"

    def markdown(self, command: str, machine: str) -> str:
        lines = [*head_lines(command, machine),
                 f"Each row: a fresh redis-server with AOF, `cascade serve` in its own process (consumer off) and "
                 f"`cascade experiments consume` in another; {self.events} click events (plus their searches) "
                 f"posted in batches by 4 concurrent clients that retry until acknowledged; halfway, the fault. "
                 f"Counted: clicks in the experiment's aggregates after the consumer drained. "
                 f"{self.seconds:.0f} s in all.", "",
                 "| appendfsync | fault | events acknowledged (2xx) | counted | lost | counted twice | orphaned | "
                 "503s / transport errors retried |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r['appendfsync']} | {r['fault']} | {r['acknowledged']} | {r['counted']} | {r['lost']} | "
                         f"{r['duplicates']} | {r['orphans']} | {r['retries']} |")
        lines += ["", "Redis writes its AOF before it replies in both modes; `everysec` only defers the fsync. So "
                      "a killed Redis process (SIGKILL) lost nothing here either way: the file was in the operating "
                      "system's cache. What `everysec` risks is a crash of the host itself (power, kernel), which "
                      "can lose up to about a second of acknowledged events; `always` fsyncs before the reply. "
                      "A host crash cannot be simulated on this machine."]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- latency


@dataclass
class LatencyResult(BenchResult):
    micro: dict[str, float]
    http: dict[str, Any]
    seconds: float = 0.0

    def table(self) -> Table:
        t = Table(title="added latency of experiments on a search")
        t.add_column("what")
        for c in ("p50", "p99"):
            t.add_column(c, justify="right", no_wrap=True)
        t.add_row("assign + team draft (µs)", f"{self.micro['p50_us']:.1f}", f"{self.micro['p99_us']:.1f}")
        for name in ("plain", "interleaved"):
            h = self.http.get(name)
            if h:
                t.add_row(f"cached search, {name} (ms)", f"{h['p50_ms']:.2f}", f"{h['p99_ms']:.2f}")
        return t

    def section(self) -> tuple[str, str]:
        return "experiments-latency", "Experiments: added latency of assignment and interleaving"

    def markdown(self, command: str, machine: str) -> str:
        m, h = self.micro, self.http
        lines = [*head_lines(command, machine),
                 f"In process, {m['n']:,} calls: assigning a user (traffic slot and arm hashes) and drawing a team-"
                 f"draft list of 10 from two rankings of 10: p50 {m['p50_us']:.1f} µs, p99 {m['p99_us']:.1f} µs "
                 f"(target: p99 under 1 ms).", ""]
        if h:
            lines += [f"Through HTTP (`cascade serve` in its own process, Redis on loopback), cached answers, "
                      f"{h['requests']:,} requests of each kind alternated on one connection: a plain search of a "
                      f"profile against an interleaved one (two cached rankings, the draw, the query logged to "
                      f"the stream before answering).", "",
                      "| search | p50 ms | p99 ms |", "|---|---:|---:|"]
            for name in ("plain", "interleaved"):
                lines.append(f"| {name} | {h[name]['p50_ms']:.2f} | {h[name]['p99_ms']:.2f} |")
            lines += ["", f"Added by the experiment end to end: p50 {h['interleaved']['p50_ms'] - h['plain']['p50_ms']:+.2f} ms, "
                          f"p99 {h['interleaved']['p99_ms'] - h['plain']['p99_ms']:+.2f} ms."]
        return "\n".join(lines) + "\n"


def micro_latency(n: int = 50_000) -> dict[str, float]:
    """Assignment plus a team draft of two 10-document rankings, timed call by call."""
    from cascade.experiments.assignment import assign, unit_of
    from cascade.experiments.config import ExperimentConfig
    from cascade.experiments.interleaving import team_draft

    exps = {"x": ExperimentConfig(mode="interleave", arms=["a", "b"], traffic=0.5),
            "y": ExperimentConfig(mode="ab", arms=["a", "b"], traffic=0.5)}
    ra = [f"d{i}" for i in range(10)]
    rb = [f"d{i}" for i in range(5, 15)]
    times = []
    for i in range(n):
        t = time.perf_counter_ns()
        unit, kind = unit_of(f"user-{i}", None, "r")
        a = assign("idx", exps, unit=unit, unit_kind=kind, query_text="some query text")
        if a is not None and a.arm is None:
            team_draft([ra, rb], 10, a.seed)
        times.append((time.perf_counter_ns() - t) / 1e3)
    return {"n": n, "p50_us": pct(times, 50), "p99_us": pct(times, 99), "mean_us": statistics.fmean(times)}


def http_latency(url: str, index: str, query: str, profile: str, requests: int = 2000) -> dict[str, Any]:
    """Cached plain and interleaved searches alternated on one connection (the same query, warm caches)."""
    import httpx

    out: dict[str, list[float]] = {"plain": [], "interleaved": []}
    with httpx.Client(base_url=url, timeout=30) as c:
        bodies = {"plain": {"query": query, "size": 10, "profile": profile},
                  "interleaved": {"query": query, "size": 10, "user_id": "latency-user"}}
        for name, body in bodies.items():  # warm both arms' cache entries
            r = c.post(f"/v1/indexes/{index}/search", json=body)
            r.raise_for_status()
            if name == "interleaved" and (r.json().get("experiment") or {}).get("mode") not in ("interleave", "multileave"):
                raise RuntimeError("the latency user is not in an interleaving experiment")
        for _ in range(requests):
            for name, body in bodies.items():
                t = time.perf_counter()
                r = c.post(f"/v1/indexes/{index}/search", json=body)
                out[name].append((time.perf_counter() - t) * 1e3)
                if r.status_code != 200:
                    raise RuntimeError(f"search answered {r.status_code}: {r.text[:200]}")
    return {"requests": requests, **{k: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for k, v in out.items()}}


# ---------------------------------------------------------------- durability run


def durability_run(config_dir: Path, index: str, experiment: str, query: str, *, appendfsync: str, fault: str,
                   events: int, batch: int = 10, clients: int = 4, env: dict[str, str] | None = None,
                   log_dir: Path | None = None) -> dict[str, Any]:
    """One scenario: searches, then ``events`` clicks posted concurrently while ``fault`` happens halfway.

    ``fault``: ``redis-restart`` (SIGTERM, start again), ``redis-crash`` (SIGKILL, start again) or
    ``consumer-crash`` (SIGKILL the consumer, start another). Returns acknowledged vs counted.
    """
    import os
    import subprocess
    import sys
    import threading

    import httpx

    from cascade.experiments.traffic import ServiceProcess, TempRedis

    folder = Path(tempfile.mkdtemp(prefix="cascade-durability-"))
    redis = TempRedis(folder, appendfsync=appendfsync).start()
    base_env = {**(env or {}), "CASCADE_REDIS_URL": redis.url, "CASCADE_EVENTS_CONSUMER": "false",
                "CASCADE_REDIS_TIMEOUT_S": "0.5", "CASCADE_REDIS_RETRY_S": "0.2"}
    log_dir = log_dir or folder
    service = ServiceProcess(config_dir, env=base_env, log=log_dir / "serve.log").start()

    def consumer() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "cascade.cli", "experiments", "consume", "--quiet"],
                                env={**os.environ, **base_env}, stdout=open(log_dir / "consume.log", "ab"),
                                stderr=subprocess.STDOUT)

    cons = consumer()
    acked: set[str] = set()
    retries = 0
    lock = threading.Lock()
    try:
        with httpx.Client(base_url=service.url, timeout=30) as c:
            shown: list[tuple[str, list[str]]] = []
            n_searches = max(1, events // 5)
            for i in range(n_searches):
                r = c.post(f"/v1/indexes/{index}/search", json={"query": query, "user_id": f"dur-{i}", "size": 10})
                r.raise_for_status()
                b = r.json()
                if not b.get("experiment"):
                    raise RuntimeError("the durability user is not in the experiment")
                shown.append((b["query_id"], [h["id"] for h in b["hits"]]))
        planned = []
        for n in range(events):
            qid, ids = shown[n % len(shown)]
            planned.append({"action_name": "click", "query_id": qid, "event_id": f"dur-{n}",
                            "event_attributes": {"object": {"object_id": ids[(n // len(shown)) % len(ids)]},
                                                 "position": {"ordinal": (n // len(shown)) % len(ids) + 1}}})
        batches = [planned[i:i + batch] for i in range(0, len(planned), batch)]
        half = len(batches) // 2
        outage = threading.Event()  # the second half is posted only once the fault has begun: it meets the outage
        work = list(enumerate(batches))

        def post_all() -> None:
            nonlocal retries
            with httpx.Client(base_url=service.url, timeout=30) as c:
                while True:
                    with lock:
                        if not work:
                            return
                        n, b = work.pop(0)
                    if n >= half:
                        outage.wait(60)
                    while True:
                        try:
                            r = c.post("/v1/events", json={"events": b})
                        except httpx.TransportError:
                            with lock:
                                retries += 1
                            time.sleep(0.1)
                            continue
                        if r.status_code == 202:
                            with lock:
                                acked.update(r.json()["event_ids"])
                            break
                        with lock:
                            retries += 1
                        time.sleep(min(float(r.headers.get("Retry-After", "0.2")), 0.5))

        workers = [threading.Thread(target=post_all) for _ in range(clients)]
        for w in workers:
            w.start()
        while True:  # the fault, once half the batches are out
            with lock:
                left = len(work)
            if left <= len(batches) - half:
                break
            time.sleep(0.01)
        if fault == "redis-restart":
            redis.stop()
        elif fault == "redis-crash":
            redis.kill()
        elif fault == "consumer-crash":
            cons.kill()
            cons.wait(10)
        outage.set()
        time.sleep(1.0)  # a second of posting into the outage
        if fault.startswith("redis"):
            redis.start()
        else:
            cons = consumer()
        for w in workers:
            w.join(300)
        if cons.poll() is not None:  # a consumer that could not even start would read as "every event lost"
            raise RuntimeError(f"the consumer exited (code {cons.returncode}); its log: {log_dir / 'consume.log'}")
        # drained: every acknowledged event applied (or lost), nothing pending
        counted = _wait_drained(redis.url, index, experiment, config_dir, timeout_s=180)
    finally:
        cons.kill()
        service.stop()
        redis.stop()
    applied = counted["applied"]
    return {"appendfsync": appendfsync, "fault": fault, "acknowledged": len(acked), "counted": counted["clicks"],
            "lost": len(acked - applied), "duplicates": max(0, counted["clicks"] - len(applied)),
            "orphans": counted["orphans"], "retries": retries}


def _wait_drained(url: str, index: str, experiment: str, config_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Clicks counted once the stream has no backlog, and how many distinct acknowledged ids were applied."""
    from cascade.config import load_config_file
    from connectors.events import QSTATE, backlog, connect, read_aggregates, read_orphans

    cfg = load_config_file(config_dir / f"{index}.yaml")
    exp = cfg.experiments[experiment]

    async def poll() -> dict[str, Any]:
        client = connect(url)
        try:
            deadline = time.monotonic() + timeout_s
            while await backlog(client) > 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the consumer did not drain the stream within {timeout_s:.0f} s")
                await asyncio.sleep(0.3)
            agg = await read_aggregates(client, index, experiment, exp.fingerprint())
            clicks = int(sum(v for k, v in agg.items() if k.startswith("clicks:") and isinstance(v, (int, float))))
            applied: set[str] = set()
            async for key in client.scan_iter(match=QSTATE + "*", count=1000):
                for f in await client.hkeys(key):
                    f = f.decode() if isinstance(f, bytes) else f
                    if f.startswith("e:"):
                        applied.add(f[2:])
            orphans = (await read_orphans(client)).get("events", 0)
            return {"clicks": clicks, "applied": applied, "orphans": orphans}
        finally:
            await client.aclose()

    return asyncio.run(poll())


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))


ProgressFn = Callable[[int, int], None]
