"""`cascade plan` (depths and hardware for a corpus size, a query rate and a p95 target) and `cascade plan-check`
(the simulator against a measured run on this machine)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Optional

import typer

from cascade.cli.common import _closing, _command, _fail, _judged, _open, _progress, _setup, console, err
from cascade.errors import CascadeError

DEFAULT_COSTS = Path("docs/tune-scifact.json")


def plan_cmd(
    docs: int = typer.Option(..., min=1, help="Documents in the corpus to serve."),
    qps: float = typer.Option(..., min=0.001, help="Queries per second to serve."),
    p95_ms: float = typer.Option(..., "--p95-ms", min=1.0, help="Target p95 latency (ms)."),
    dims: int = typer.Option(384, min=1, help="Embedding dimensions (all-MiniLM-L6-v2: 384)."),
    gpu: str = typer.Option("v100", help="GPU of the rerank servers: v100 (cited MiniLM-L6 throughput) or none "
                                         "(the cross-encoder on the replicas' CPUs, measured here)."),
    gpu_pairs_per_s: Optional[float] = typer.Option(None, min=1.0, help="Cross-encoder pairs/s of your GPU "
                                                    "(measured there), instead of the cited V100 figure."),
    gpu_call_ms: float = typer.Option(2.0, min=0.0, help="Overhead of one rerank call to a GPU server (ms)."),
    os_call_ms: float = typer.Option(5.0, min=0.0, help="Overhead of one OpenSearch search request besides the "
                                     "per-shard time (ms)."),
    vectors: str = typer.Option("fp32", help="Vector encoding in OpenSearch: fp32, fp16, byte or binary."),
    copies: int = typer.Option(2, min=1, help="Copies of every shard (primary + replicas)."),
    shard_docs: int = typer.Option(2_000_000, min=1, help="Documents per primary shard."),
    node_ram_gib: float = typer.Option(64.0, min=4.0, help="RAM of an OpenSearch data node (GiB)."),
    node_cores: int = typer.Option(8, min=1, help="Cores of an OpenSearch data node."),
    replica_cores: int = typer.Option(8, min=2, help="Cores of a cascade replica."),
    costs: Path = typer.Option(DEFAULT_COSTS, help="A `cascade tune --json` report: stage costs measured on this "
                               "machine and quality/recall curves measured on your collection."),
    hnsw_sizes: str = typer.Option("10000,40000", help="Graph sizes to time faiss HNSW at (kNN cost per shard)."),
    queries: int = typer.Option(4000, min=200, help="Queries to simulate."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the plan as JSON."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="PNG: p95 against fleet size, quality against depth, "
                                            "recall@k."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section for this plan."),
) -> None:
    """How many candidates per stage, how many to rerank and what hardware, for N documents at Q queries/s under a
    p95 target: measured costs and curves, cited public figures and a discrete-event simulation."""
    _setup()
    try:
        from cascade.planning.figures import ENCODINGS
        from cascade.planning.hnsw import measure_hnsw
        from cascade.planning.plan import Measured, Params, make_plan
        from cascade.planning.report import markdown, plot, tables
        from cascade.report import machine, update_section

        if vectors not in ENCODINGS:
            raise CascadeError(f"--vectors {vectors!r}: expected one of {', '.join(ENCODINGS)}")
        try:
            data = json.loads(costs.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CascadeError(f"--costs {costs}: cannot read ({exc.strerror or exc}); run `cascade tune ... --json "
                               f"{costs}` first: it measures the stage costs and curves the plan needs") from None
        except json.JSONDecodeError as exc:
            raise CascadeError(f"--costs {costs}: not JSON ({exc})") from None
        if "costs" not in data or "curves" not in data:
            raise CascadeError(f"--costs {costs}: not a `cascade tune --json` report (no costs/curves)")
        measured = Measured.from_tune(data, str(costs))
        try:
            sizes = tuple(int(x) for x in hnsw_sizes.split(",") if x.strip())
        except ValueError:
            raise CascadeError(f"--hnsw-sizes {hnsw_sizes!r}: expected whole numbers separated by commas") from None
        base = _document_vectors(data.get("index"))
        if base is not None and base.shape[1] != dims:
            base = None  # the collection's embeddings have other dimensions: time random vectors of the asked ones
        with _progress() as prog:
            prog.add_task("timing faiss HNSW here", total=None)
            hnsw = measure_hnsw(base, dims=dims, sizes=sizes)
        params = Params(docs, qps, p95_ms, dims=dims, vectors=vectors, copies=copies, shard_docs=shard_docs,
                        node_ram_gib=node_ram_gib, node_cores=node_cores, replica_cores=replica_cores, gpu=gpu,
                        gpu_pairs_per_s=gpu_pairs_per_s, gpu_call_ms=gpu_call_ms, os_call_ms=os_call_ms,
                        queries=queries)
        with _progress() as prog:
            prog.add_task("simulating fleets", total=None)
            plan = make_plan(measured, hnsw, params)
        r = plan.as_json()
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    for t in tables(r):
        console.print(t)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(r, indent=1))
        err.print(f"wrote {json_out}")
    image = None
    if plot_out:
        plot(r, plot_out)
        err.print(f"wrote {plot_out}")
    if report:
        import os

        image = os.path.relpath(plot_out, report.parent) if plot_out else None
        key = f"plan-{docs}-{qps:g}-{gpu}"
        update_section(report, key, f"cascade plan: {docs:,} documents at {qps:g} queries/s, p95 <= {p95_ms:g} ms "
                       f"(GPU: {gpu})", markdown(r, _command(), machine(), image))
        err.print(f"updated {report}")


def _document_vectors(index: str | None):
    """The tuned index's document embeddings when its backend stores them here (the embedded backend)."""
    if not index:
        return None
    try:
        opened = _open(index, None, stages=False)
    except CascadeError:
        return None
    try:
        vectors = getattr(opened.backend, "vectors", None)
        import numpy as np

        return None if vectors is None else np.asarray(vectors, dtype=np.float32)
    finally:
        asyncio.run(opened.close())


def plan_check_cmd(
    dataset: str = typer.Option("scifact", help="Dataset with a built index (its queries drive the run)."),
    split: str = typer.Option("test", help="qrels split whose queries are used (only their texts)."),
    profile: Optional[str] = typer.Option(None, help="Rank profile to load (default: the index's default_profile)."),
    rates: str = typer.Option("1,2,3", help="Arrival rates to check (queries/s)."),
    per_rate: int = typer.Option(150, min=20, help="Queries per rate."),
    pool: int = typer.Option(60, min=5, help="Distinct queries drawn from."),
    json_out: Optional[Path] = typer.Option(None, "--json"),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """The planner's simulator against this machine: the real cascade under Poisson arrivals into one FIFO slot,
    beside the simulation fed with the same arrivals and the service times measured alone."""
    _setup()
    try:
        from cascade.planning.check import run_check
        from cascade.planning.report import check_markdown, check_table
        from cascade.report import machine, update_section

        try:
            rs = [float(x) for x in rates.split(",") if x.strip()]
        except ValueError:
            raise CascadeError(f"--rates {rates!r}: expected numbers separated by commas") from None
        if not rs or min(rs) <= 0:
            raise CascadeError(f"--rates {rates!r}: rates must be above 0")
        queries, qrels = _judged(dataset, split)
        texts = [queries[q] for q in qrels if q in queries][:pool]
        opened = _open(dataset, None, [profile] if profile else None)
        casc = opened.cascade(profile)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err) as prog:
            tasks: dict[str, int] = {}

            def on_progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = prog.add_task(phase, total=total)
                prog.update(tasks[phase], completed=done)

            res = asyncio.run(_closing(opened, run_check(casc, texts, rs, per_rate, dataset=dataset, split=split,
                                                         on_progress=on_progress)))
        r = res.as_json()
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    console.print(check_table(r))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(r, indent=1))
        err.print(f"wrote {json_out}")
    if report:
        update_section(report, f"plan-check-{dataset}", "The planner's simulator against a measured run on this "
                       "machine", check_markdown(r, _command(), machine()))
        err.print(f"updated {report}")

