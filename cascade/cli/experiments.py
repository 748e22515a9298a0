"""`cascade experiments ...`: reports, the event consumer, the UBI export, simulated traffic and the benchmarks.

- ``list`` / ``report ID``: what runs, and where it stands (the same report as ``GET /v1/experiments/{id}``).
- ``consume``: aggregate events outside the service (``CASCADE_EVENTS_CONSUMER=false`` there).
- ``export-ubi``: the logged searches and events as OpenSearch UBI indexes (files, or straight into a cluster).
- ``simulate``: simulated users through a real service, and A/B against interleaving over many seeds.
- ``fidelity`` / ``peeking`` / ``bench-durability`` / ``bench-latency``: the other measurements in
  docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import typer

from cascade.cli.common import (
    _command, _config_for, _fail, _judged, _progress, _settings, _setup, _show, console, err,
)
from cascade.errors import CascadeError

experiments_app = typer.Typer(no_args_is_help=True, help="Online experiments: reports, events, simulated traffic.")


def _all_configs() -> dict[str, Any]:
    from cascade.cli.serve import config_source

    return {name: cfg for name, (cfg, _) in config_source(None, _settings()).read().items()}


def _find(eid: str) -> tuple[str, Any]:
    configs = _all_configs()
    for name, cfg in configs.items():
        if eid in cfg.experiments:
            return name, cfg.experiments[eid]
    have = sorted(e for c in configs.values() for e in c.experiments)
    raise CascadeError(f"no experiment {eid!r} in the configs (CASCADE_CONFIG_DIR and the built-in ones); "
                       f"experiments: {', '.join(have) or 'none'}")


def _redis_url() -> str:
    url = _settings().redis_url
    if not url:
        raise CascadeError("experiments are measured from events in Redis: set CASCADE_REDIS_URL (the service's)")
    return url


@experiments_app.command("list")
def list_cmd() -> None:
    """Every experiment declared in the configs, with its arms and status."""
    _setup()
    from rich.table import Table

    try:
        configs = _all_configs()
    except CascadeError as exc:
        _fail(exc)
        return
    t = Table(title="experiments")
    for c in ("id", "index", "mode", "arms", "traffic", "status"):
        t.add_column(c, overflow="fold")
    for name, cfg in sorted(configs.items()):
        for eid, exp in cfg.experiments.items():
            t.add_row(eid, name, exp.mode, ", ".join(exp.arms), f"{exp.traffic:g}", exp.status())
    console.print(t)


@experiments_app.command("report")
def report_cmd(
    experiment: str = typer.Argument(..., help="The experiment's id (as its index config declares it)."),
    url: Optional[str] = typer.Option(None, help="Ask this running service (GET /v1/experiments/ID) instead of "
                                                 "reading Redis (CASCADE_REDIS_URL) directly."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the whole report as JSON."),
    plot: Optional[Path] = typer.Option(None, help="Draw the cumulative preference (or difference) with its "
                                                   "always-valid band over impressions."),
    markdown: Optional[Path] = typer.Option(None, help="Write the report as Markdown."),
) -> None:
    """Per-arm metrics, the tests (always-valid and fixed-horizon), the sample-ratio check and the verdict."""
    _setup()
    from cascade.experiments.analysis import ExperimentReport

    try:
        if url:
            import httpx

            r = httpx.get(f"{url.rstrip('/')}/v1/experiments/{experiment}", timeout=30)
            if r.status_code != 200:
                raise CascadeError(f"{url} answered {r.status_code}: {r.text[:300]}")
            rep = _from_json(ExperimentReport, r.json())
        else:
            index, exp = _find(experiment)
            rep = asyncio.run(_load(_redis_url(), index, experiment, exp))
    except CascadeError as exc:
        _fail(exc)
        return
    console.print(rep.table())
    console.print(rep.tests_table())
    err.print(f"verdict: {rep.verdict}", markup=False)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rep.as_json(), indent=2))
    if plot:
        err.print(f"wrote {rep.plot(plot)}")
    if markdown:
        markdown.write_text(rep.markdown())


def _from_json(cls: Any, data: dict[str, Any]) -> Any:
    from cascade.experiments.analysis import ABResult, ArmMetrics, PairResult

    d = dict(data)
    d["arm_metrics"] = [ArmMetrics(**m) for m in d.get("arm_metrics", [])]
    d["ab"] = [ABResult(**{k: (v if v is not None else float("nan")) for k, v in r.items()}) for r in d.get("ab", [])]
    d["pairs"] = [PairResult(**r) for r in d.get("pairs", [])]
    d["series"] = [{k: (v if v is not None else float("nan")) for k, v in p.items()} for p in d.get("series", [])]
    return cls(**d)


async def _load(url: str, index: str, eid: str, exp: Any) -> Any:
    from cascade.service.experiments import load_report
    from connectors.events import connect

    client = connect(url)
    try:
        return await load_report(client, index, eid, exp)
    except OSError as exc:
        raise CascadeError(f"cannot read Redis at {url}: {exc}") from None
    finally:
        await client.aclose()


@experiments_app.command("consume")
def consume_cmd(
    name: Optional[str] = typer.Option(None, help="Consumer name in the group (default: host-pid); a restarted "
                                                  "consumer with the same name replays what it had not finished."),
    quiet: bool = typer.Option(False, help="Print nothing but errors."),
) -> None:
    """Aggregate events from the Redis stream until Ctrl-C (one consumer-group member; run several to share)."""
    _setup()
    from connectors.events import Consumer

    s = _settings()
    try:
        url = _redis_url()
    except CascadeError as exc:
        _fail(exc)
        return
    last = [0.0]

    def on_batch(st: Any) -> None:
        if not quiet and time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            err.print(f"applied {st.records} records ({st.queries} searches, {st.events} events, {st.orphans} "
                      f"orphans, {st.duplicates} duplicates, {st.replayed} replayed)")

    consumer = Consumer(url, name=name, query_ttl_s=s.events_query_ttl_s, snapshot_every=s.events_snapshot_every,
                        on_batch=on_batch)
    if not quiet:
        err.print(f"consuming {url} as {consumer.name} (Ctrl-C stops)")

    async def main() -> None:
        try:
            await consumer.run()
        finally:
            await consumer.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


@experiments_app.command("export-ubi")
def export_ubi(
    out: Path = typer.Option(Path("ubi-export"), help="Folder for ubi_queries.ndjson and ubi_events.ndjson "
                                                     "(OpenSearch _bulk bodies) and their index mappings."),
    host: Optional[str] = typer.Option(None, help="Also load them into this OpenSearch cluster (https://host:9200)."),
    username: Optional[str] = typer.Option(None, help="Cluster user."),
    password_env: Optional[str] = typer.Option(None, help="Environment variable holding the password."),
    verify_certs: bool = typer.Option(True, "--verify-certs/--no-verify-certs"),
    index: Optional[str] = typer.Option(None, help="Only searches of this cascade index."),
) -> None:
    """Logged searches and their events as UBI's ubi_queries and ubi_events (read by OpenSearch Dashboards and
    the Search Relevance Workbench)."""
    _setup()
    from cascade.experiments.ubi import export, load_into_opensearch

    try:
        url = _redis_url()
        with _progress() as prog:
            task = prog.add_task("exporting the event stream", total=None)
            counts = asyncio.run(export(url, out, index=index,
                                        on_progress=lambda n: prog.update(task, completed=n)))
        err.print(f"wrote {counts['queries']} queries and {counts['events']} events to {out}/")
        if host:
            import os

            password = os.environ.get(password_env) if password_env else None
            if password_env and password is None:
                raise CascadeError(f"--password-env {password_env}: the variable is not set")
            loaded = asyncio.run(load_into_opensearch(out, host, username=username, password=password,
                                                      verify_certs=verify_certs))
            err.print(f"loaded into {host}: {loaded}")
    except CascadeError as exc:
        _fail(exc)


# ---------------------------------------------------------------- simulated traffic and benchmarks


def _arms(spec: str, cfg: Any, least: int = 2) -> list[str]:
    arms = [a.strip() for a in spec.split(",") if a.strip()]
    if len(arms) < least or len(set(arms)) != len(arms):
        raise CascadeError(f"--arms {spec!r}: name at least {least} different rank profiles, comma-separated")
    missing = [a for a in arms if a not in cfg.profile_names()]
    if missing:
        raise CascadeError(f"--arms: index {cfg.index} has no profile {missing[0]!r} (profiles: "
                           f"{', '.join(cfg.profile_names())})")
    return arms


def _config_with(cfg: Any, experiments: dict[str, Any], folder: Path | None = None) -> Path:
    """A config folder holding ``cfg`` plus ``experiments`` (for a service the command starts); returns it."""
    from cascade.config import dump_config, parse_config

    folder = folder or Path(tempfile.mkdtemp(prefix="cascade-experiments-cfg-"))
    data = cfg.model_dump(mode="json")
    data["experiments"] = experiments
    (folder / f"{cfg.index}.yaml").write_text(dump_config(parse_config(data, f"{cfg.index}.yaml")))
    return folder


def _rank(cfg: Any, dataset: str, split: str, arms: list[str], limit: Optional[int]) -> tuple[Any, dict[str, float]]:
    from cascade.experiments.simulate import judged_from_index

    queries, qrels = _judged(dataset, split)
    with _progress() as prog:
        task = prog.add_task(f"ranking {dataset} {split} with {', '.join(arms)}", total=None)
        return judged_from_index(cfg, _settings(), queries, qrels, arms, limit=limit,
                                 on_progress=lambda d, t: prog.update(task, completed=d, total=t))


@experiments_app.command("simulate")
def simulate_cmd(
    dataset: str = typer.Option("scifact", help="BEIR dataset whose judged queries users ask (its index built)."),
    split: str = typer.Option("test"),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index (default: the dataset's name)."),
    arms: str = typer.Option("fusion,default", help="Two rank profiles: control, treatment."),
    users: str = typer.Option("navigational", help="Click model: perfect, navigational, informational, pbm."),
    metric: str = typer.Option("clicks", help="A/B outcome per impression: clicks, ctr, mrr."),
    seeds: int = typer.Option(100, min=1, help="Simulated experiments per mode (power study)."),
    max_impressions: int = typer.Option(100_000, min=100, help="Cap per seed."),
    look_every: int = typer.Option(100, min=1, help="Impressions between looks at the tests."),
    http_seeds: int = typer.Option(1, min=0, help="Seeds replayed through a real `cascade serve` (0: none)."),
    http_max: int = typer.Option(5000, min=1, help="At most this many impressions per HTTP seed."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
    plot: Optional[Path] = typer.Option(None, help="Share of seeds significant against impressions, per mode."),
) -> None:
    """Simulated users A/B-testing and interleaving two profiles: impressions until p < 0.05 with 80% power."""
    _setup()
    from cascade.bench.experiments import SensitivityResult, write_json
    from cascade.experiments import clicks
    from cascade.experiments.simulate import Design, power

    t0 = time.perf_counter()
    try:
        cfg = _config_for(index_name or dataset, None, create=False)
        pair = _arms(arms, cfg)
        if len(pair) != 2:
            raise CascadeError("--arms: simulate compares exactly two profiles (fidelity takes more)")
        model = clicks.model(users)
        judged, offline = _rank(cfg, dataset, split, pair, limit)
        better = 1 if offline[pair[1]] >= offline[pair[0]] else 0
        designs = {"ab": Design("ab", pair, "sim-ab", metric), "interleave": Design("interleave", pair, "sim-il")}
        out: dict[str, Any] = {}
        with _progress() as prog:
            for mode, d in designs.items():
                task = prog.add_task(f"{mode}: {seeds} seeds", total=seeds)
                out[mode] = power(judged, d, model, seeds=range(seeds), max_impressions=max_impressions,
                                  look_every=look_every, better=better,
                                  on_seed=lambda s, task=task: prog.update(task, advance=1))
        http: dict[str, Any] = {}
        if http_seeds:
            http = _http_phase(cfg, judged, designs, model, out, seeds=list(range(http_seeds)), http_max=http_max,
                               look_every=look_every)
    except (CascadeError, ValueError, RuntimeError) as exc:
        _fail(exc)
        return
    res = SensitivityResult(dataset, split, pair, users, offline, len(judged.queries), out["ab"].as_json(),
                            out["interleave"].as_json(), http,
                            {"seeds": seeds, "max_impressions": max_impressions, "look_every": look_every,
                             "metric": metric, "alpha": 0.05, "power": 0.8, "user": users},
                            time.perf_counter() - t0)
    _show(res, report)
    write_json(json_out, res.as_json())
    if plot:
        err.print(f"wrote {res.plot(plot)}")


def _http_phase(cfg: Any, judged: Any, designs: dict[str, Any], model: Any, powers: dict[str, Any], *,
                seeds: list[int], http_max: int, look_every: int) -> dict[str, Any]:
    """Replay seeds through a real `cascade serve` (own process, Redis, the experiment in its config) and check
    that the service's aggregates equal the in-process tally of the same impressions."""
    import httpx

    from cascade.bench.common import pct
    from cascade.experiments.simulate import run_stream
    from cascade.experiments.traffic import HttpTraffic, ServiceProcess, TempRedis

    s = _settings()
    redis = None if s.redis_url else TempRedis().start()
    url = s.redis_url or redis.url  # type: ignore[union-attr]
    key = secrets.token_hex(8)
    tag = secrets.token_hex(3)
    folder = Path(tempfile.mkdtemp(prefix="cascade-simulate-"))
    ids = {mode: f"sim-{mode}-{tag}" for mode in designs}

    def write(mode: str) -> None:
        d = designs[mode]
        _config_with(cfg, {ids[mode]: {"mode": d.mode, "arms": d.arms, "salt": d.salt, "metric": d.metric}}, folder)

    write("ab")
    service = ServiceProcess(folder, env={"CASCADE_REDIS_URL": url, "CASCADE_ADMIN_API_KEY": key,
                                          "CASCADE_EVENTS_SNAPSHOT_EVERY": str(look_every)}).start()
    out: dict[str, Any] = {"seeds": seeds, "redis": "from CASCADE_REDIS_URL" if s.redis_url else "redis-server on loopback",
                           "modes": {}}
    search_ms: list[float] = []
    events_ms: list[float] = []
    total_impressions = total_events = 0
    elapsed = 0.0
    match = True
    details = []
    try:
        for n_mode, (mode, d) in enumerate(designs.items()):
            if n_mode:
                write(mode)
                r = httpx.post(f"{service.url}/v1/admin/reload", headers={"X-API-Key": key}, timeout=600)
                if r.status_code != 200:
                    raise RuntimeError(f"reload answered {r.status_code}: {r.text[:300]}")
            traffic = HttpTraffic(service.url, cfg.index, d.arms)
            expect = {"served": 0, "clicks": [0] * len(d.arms), "pairs": (0, 0, 0)}
            n_total = 0
            for seed in seeds:
                stop = powers[mode].stopping[seed] if seed < len(powers[mode].stopping) else None
                n = min(stop or http_max, http_max)
                inproc = run_stream(judged, d, model, seed, max_impressions=n, look_every=look_every, stop=False)
                t = time.perf_counter()
                via = run_stream(judged, d, model, seed, max_impressions=n, look_every=look_every, stop=False,
                                 serve=traffic.serve, on_impression=traffic.post_events)
                elapsed += time.perf_counter() - t
                same = (via.tally.clicks == inproc.tally.clicks and via.tally.served == inproc.tally.served
                        and via.tally.wins == inproc.tally.wins and via.tally.ties == inproc.tally.ties)
                match &= same
                n_total += n
                expect["served"] += n
                expect["clicks"] = [a + b for a, b in zip(expect["clicks"], via.tally.clicks)]
                if mode != "ab":
                    w, l, tt = via.tally.pair(0, 1)
                    expect["pairs"] = tuple(a + b for a, b in zip(expect["pairs"], (w, l, tt)))
            rep = traffic.wait_counted(ids[mode], n_total)
            got_clicks = [m["team_clicks"] if mode != "ab" else m["clicks"] for m in rep["arm_metrics"]]
            agree = rep["served"] == expect["served"] and got_clicks == expect["clicks"]
            if mode != "ab":
                p = rep["pairs"][0]
                agree &= (p["wins"], p["losses"], p["ties"]) == expect["pairs"]
            match &= agree
            details.append(f"{mode}: {n_total} impressions, service counted {rep['served']} served and clicks "
                           f"{got_clicks}, simulator {expect['clicks']}")
            out["modes"][mode] = {"experiment": ids[mode], "impressions": n_total, "service_report": {
                "served": rep["served"], "verdict": rep["verdict"],
                "p_always_valid": (rep["ab"][0]["p_always_valid"] if mode == "ab" else rep["pairs"][0]["p_always_valid"])}}
            search_ms += traffic.search_ms
            events_ms += traffic.events_ms
            total_impressions += n_total
            total_events += traffic.events_sent
    finally:
        service.stop()
        if redis is not None:
            redis.stop()
    out.update(impressions=total_impressions, events=total_events, match=match, detail="; ".join(details),
               searches_per_s=total_impressions / elapsed if elapsed else 0.0,
               events_per_s=total_events / elapsed if elapsed else 0.0,
               search_p50_ms=pct(search_ms, 50), search_p99_ms=pct(search_ms, 99),
               events_p50_ms=pct(events_ms, 50), events_p99_ms=pct(events_ms, 99))
    return out


@experiments_app.command("fidelity")
def fidelity_cmd(
    dataset: str = typer.Option("scifact"),
    split: str = typer.Option("test"),
    index_name: Optional[str] = typer.Option(None, "--index"),
    arms: str = typer.Option("lexical,semantic,fusion,default", help="Four or more rank profiles."),
    users: str = typer.Option("perfect,navigational,informational", help="Click models, comma-separated."),
    seeds: int = typer.Option(100, min=1),
    impressions: int = typer.Option(3000, min=100, help="Impressions per run."),
    look_every: int = typer.Option(100, min=1),
    min_delta: float = typer.Option(0.02, help="Pairs closer than this offline are left out."),
    limit: Optional[int] = typer.Option(None, min=1),
    json_out: Optional[Path] = typer.Option(None, "--json"),
    report: Optional[Path] = typer.Option(None),
) -> None:
    """Does interleaving pick the offline winner for every pair, and does multileaving need fewer impressions?"""
    _setup()
    from cascade.bench.experiments import FidelityResult, write_json
    from cascade.experiments import clicks
    from cascade.experiments.simulate import fidelity

    t0 = time.perf_counter()
    try:
        cfg = _config_for(index_name or dataset, None, create=False)
        names = _arms(arms, cfg, least=3)
        models = [clicks.model(u.strip()) for u in users.split(",") if u.strip()]
        judged, offline = _rank(cfg, dataset, split, names, limit)
        rows = []
        n_pairs = sum(1 for i, a in enumerate(names) for b in names[i + 1:] if abs(offline[a] - offline[b]) >= min_delta)
        with _progress() as prog:
            for m in models:
                task = prog.add_task(f"{m.name} users", total=seeds * (n_pairs + 1))
                rows.append(fidelity(judged, names, offline, m, seeds=range(seeds), impressions=impressions,
                                     look_every=look_every, min_delta=min_delta,
                                     on_run=lambda task=task: prog.update(task, advance=1)))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    res = FidelityResult(dataset, split, names, offline, rows, {"seeds": seeds, "impressions": impressions,
                                                                "look_every": look_every, "min_delta": min_delta},
                         time.perf_counter() - t0)
    _show(res, report)
    write_json(json_out, res.as_json())


@experiments_app.command("peeking")
def peeking_cmd(
    dataset: str = typer.Option("scifact"),
    split: str = typer.Option("test"),
    index_name: Optional[str] = typer.Option(None, "--index"),
    profile: str = typer.Option("fusion", help="The profile both arms serve."),
    users: str = typer.Option("navigational"),
    runs: int = typer.Option(1000, min=1),
    impressions: int = typer.Option(5000, min=100),
    look_every: int = typer.Option(100, min=1),
    limit: Optional[int] = typer.Option(None, min=1),
    json_out: Optional[Path] = typer.Option(None, "--json"),
    report: Optional[Path] = typer.Option(None),
) -> None:
    """A/A experiments looked at every N impressions: the always-valid tests' false-positive rate."""
    _setup()
    from cascade.bench.experiments import PeekingResult, write_json
    from cascade.experiments import clicks
    from cascade.experiments.simulate import Design, Judged, aa_false_positives

    t0 = time.perf_counter()
    try:
        cfg = _config_for(index_name or dataset, None, create=False)
        if profile not in cfg.profile_names():
            raise CascadeError(f"--profile: index {cfg.index} has no profile {profile!r} (profiles: "
                               f"{', '.join(cfg.profile_names())})")
        one, _ = _rank(cfg, dataset, split, [profile], limit)
        twin = f"{profile} (copy)"
        judged = Judged(one.queries, one.grades, {profile: one.rankings[profile], twin: one.rankings[profile]})
        model = clicks.model(users)
        rows = []
        with _progress() as prog:
            for mode in ("ab", "interleave"):
                task = prog.add_task(f"A/A {mode}", total=runs)
                rows.append({"mode": mode, **aa_false_positives(
                    judged, Design(mode, [profile, twin], f"aa-{mode}"), model, runs=runs, impressions=impressions,
                    look_every=look_every, on_run=lambda r, task=task: prog.update(task, advance=1))})
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    res = PeekingResult(dataset, profile, users, rows, time.perf_counter() - t0)
    _show(res, report)
    write_json(json_out, res.as_json())


@experiments_app.command("bench-durability")
def bench_durability(
    dataset: str = typer.Option("scifact", help="Index whose config (plus an experiment) the service runs."),
    arms: str = typer.Option("fusion,lexical", help="The experiment's arms (cheap profiles keep it about events)."),
    events: int = typer.Option(2000, min=10),
    faults: str = typer.Option("redis-restart,redis-crash,consumer-crash"),
    fsync: str = typer.Option("everysec,always", help="appendfsync settings to run."),
    report: Optional[Path] = typer.Option(None),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Events posted through Redis restarts, Redis crashes and consumer crashes: acknowledged vs counted."""
    _setup()
    from cascade.bench.experiments import DurabilityResult, durability_run, write_json

    t0 = time.perf_counter()
    try:
        cfg = _config_for(dataset, None, create=False)
        pair = _arms(arms, cfg)
        folder = _config_with(cfg, {"durability": {"mode": "ab", "arms": pair}})
        rows = []
        plan = [(f, x) for f in fsync.split(",") for x in faults.split(",")]
        with _progress() as prog:
            task = prog.add_task("durability scenarios", total=len(plan))
            for f, x in plan:
                rows.append(durability_run(folder, cfg.index, "durability", "cholesterol and heart disease",
                                           appendfsync=f.strip(), fault=x.strip(), events=events))
                prog.update(task, advance=1)
    except (CascadeError, ValueError, RuntimeError) as exc:
        _fail(exc)
        return
    res = DurabilityResult(rows, events, time.perf_counter() - t0)
    _show(res, report)
    write_json(json_out, {"events": events, "rows": rows})


@experiments_app.command("bench-latency")
def bench_latency(
    dataset: str = typer.Option("scifact"),
    arms: str = typer.Option("fusion,default"),
    requests: int = typer.Option(2000, min=10),
    calls: int = typer.Option(50_000, min=100),
    report: Optional[Path] = typer.Option(None),
) -> None:
    """Added latency of experiments: assignment + team draft in process, and cached searches through HTTP."""
    _setup()
    from cascade.bench.experiments import LatencyResult, http_latency, micro_latency
    from cascade.experiments.traffic import ServiceProcess, TempRedis

    t0 = time.perf_counter()
    try:
        cfg = _config_for(dataset, None, create=False)
        pair = _arms(arms, cfg)
        micro = micro_latency(calls)
        folder = _config_with(cfg, {"latency": {"mode": "interleave", "arms": pair}})
        s = _settings()
        redis = None if s.redis_url else TempRedis().start()
        service = ServiceProcess(folder, env={"CASCADE_REDIS_URL": s.redis_url or redis.url}).start()  # type: ignore[union-attr]
        try:
            http = http_latency(service.url, cfg.index, "cholesterol and heart disease", pair[0], requests)
        finally:
            service.stop()
            if redis is not None:
                redis.stop()
    except (CascadeError, ValueError, RuntimeError) as exc:
        _fail(exc)
        return
    _show(LatencyResult(micro, http, time.perf_counter() - t0), report)
