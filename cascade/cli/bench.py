"""The `cascade bench*` commands: argument parsing and printing; the benchmarks live in cascade/bench/."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from cascade.cli.common import (_command, _config_for, _dataset_dir, _fail, _judged, _progress, _settings, _setup,
                                _show, _with_progress, _write_section, console, err)
from cascade.errors import CascadeError


def _pair_stage_config(dataset: str):
    """The index config and its default profile's first stage that scores pairs (the cross-encoder)."""
    from cascade.bench.common import pair_stage_config

    cfg = _config_for(dataset, None, create=False)
    ce = pair_stage_config(cfg.profile().stages)
    if ce is None:
        raise CascadeError(f"the config of {dataset} has no cross_encoder stage to take the model from")
    return cfg, ce


def bench_cmd(
    dataset: str = typer.Option("scifact", help="Dataset with a built index and a cascade that has a cross-encoder."),
    split: str = typer.Option("test"),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    depths: str = typer.Option("10,20,30,50", help="Extra cross-encoder depths for the quality/latency curve."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write {naive, cascade, ratios} as JSON."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="PNG of nDCG@10 against p95 latency."),
) -> None:
    """The naive pipeline (BM25 top 100, cross-encoder on every pair) beside the cascade, side by side."""
    _setup()
    from cascade.bench.naive import naive_vs_cascade
    from cascade.builder import open_cascade

    try:
        queries, qrels = _judged(dataset, split)
        casc = open_cascade(_config_for(dataset, None, create=False), _settings())
        ds = tuple(int(x) for x in depths.split(",") if x.strip())
        n = min(limit or len(qrels), len(qrels))
        res = _with_progress(f"naive vs cascade on {dataset} {split}", n, lambda on_progress: naive_vs_cascade(
            casc, queries, qrels, depths=ds, limit=limit, dataset=dataset, split=split, on_progress=on_progress))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    console.print(res.table())
    console.print(res.verdict())
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res.as_json(), indent=2))
    if plot_out:
        from cascade.report import plot_pareto

        plot_pareto(res.summary(), f"{dataset} {split}", plot_out)
    if report:
        _write_section(report, res, image=os.path.relpath(plot_out, report.parent) if plot_out else None)


def bench_combine(
    dataset: str = typer.Option("scifact"),
    split: str = typer.Option("test"),
    limit: Optional[int] = typer.Option(None, min=1),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """nDCG@10 of every way to combine the cross-encoder with the stage before it (depth, normalization, weights)."""
    _setup()
    from cascade.bench.combine import combination_sweep
    from cascade.builder import open_cascade

    try:
        queries, qrels = _judged(dataset, split)
        casc = open_cascade(_config_for(dataset, None, create=False), _settings())
        n = min(limit or len(qrels), len(qrels))
        res = _with_progress("scoring candidates once", n, lambda on_progress: combination_sweep(
            casc, queries, qrels, limit=limit, dataset=dataset, split=split, on_progress=on_progress))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    _show(res, report)


def bench_ltr(
    dataset: str = typer.Option("scifact", help="Dataset whose queries to time."),
    split: str = typer.Option("test"),
    candidates: int = typer.Option(200, min=1, help="Candidates per query (retrievers' k and fusion keep)."),
    limit: Optional[int] = typer.Option(None, min=1),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """Time features + LightGBM scoring per query on N fused candidates (p50/p95)."""
    _setup()
    from cascade.bench.ltr import ltr_latency, open_for_latency

    try:
        queries, qrels = _judged(dataset, split)
        casc = open_for_latency(_config_for(dataset, None, create=False), _settings(), candidates)
        texts = [queries[q] for q in qrels if q in queries][:limit]
        res = _with_progress("timing features + LTR", len(texts), lambda on_progress: ltr_latency(
            casc, texts, on_progress=on_progress, dataset=dataset, split=split))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    _show(res, report)


def _built_config(dataset: str, index_name: Optional[str]):
    """The index's config, once its embedded index is known to be built (what the service benchmarks serve)."""
    from connectors.embedded import index_exists

    cfg = _config_for(index_name or dataset, None, create=False)
    if cfg.backend.type == "embedded" and not index_exists(cfg, _settings()):
        raise CascadeError(f"index {cfg.index} is not built; run `cascade index --dataset {dataset}` "
                           f"(or `cascade demo --prepare-only`) first")
    return cfg


def bench_serve(
    dataset: str = typer.Option("scifact", help="Dataset whose queries to send (its index must be built)."),
    split: str = typer.Option("test"),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index (default: the dataset's name)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N queries for the uncached pass."),
    concurrency: list[int] = typer.Option([1, 4, 16], help="Connections of the cache-hit load (repeatable)."),
    duration: int = typer.Option(10, min=1, max=300, help="Seconds of load per concurrency level."),
    with_cross_encoder: bool = typer.Option(False, help="Keep cross-encoder stages (about 0.8 s per uncached query)."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """Time the HTTP service: cache hits under load (wrk) and uncached searches beside in-process ones."""
    _setup()
    from cascade.bench import serve as bench

    try:
        queries, qrels = _judged(dataset, split)
        cfg = bench.cheap_config(_built_config(dataset, index_name), with_cross_encoder)
        texts = [queries[q] for q in qrels if q in queries][:limit]
        res = bench.run(cfg, _settings(), texts, concurrency=concurrency, duration_s=duration,
                        on_step=lambda s: err.print(f"[dim]{s}[/]"))
    except CascadeError as exc:
        _fail(exc)
        return
    for t in res.tables():
        console.print(t)
    if report:
        _write_section(report, res, command=f"make bench ({_command()})")


def bench_overload(
    dataset: str = typer.Option("scifact", help="Dataset whose queries to send (its index must be built)."),
    split: str = typer.Option("test"),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index (default: the dataset's name)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N queries."),
    clients: list[int] = typer.Option([16, 64, 128], min=1, help="Concurrent clients of a level (repeatable)."),
    duration: int = typer.Option(20, min=1, max=300, help="Seconds of load per level (the in-flight ones finish)."),
    with_cross_encoder: bool = typer.Option(True, help="Keep cross-encoder stages (an uncached search must cost "
                                            "enough for queueing to matter)."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="PNG of p99 latency and 503 share against clients."),
) -> None:
    """Uncached searches under overload: the admission policy (503 + Retry-After) beside queueing only."""
    _setup()
    from cascade.bench import overload as bench

    try:
        queries, qrels = _judged(dataset, split)
        cfg = bench.cheap_config(_built_config(dataset, index_name), with_cross_encoder)
        texts = [queries[q] for q in qrels if q in queries][:limit]
        res = bench.run(cfg, _settings(), texts, clients=clients, duration_s=duration,
                        on_step=lambda s: err.print(f"[dim]{s}[/]"))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    for t in res.tables():
        console.print(t)
    if plot_out:
        bench.plot(res, plot_out)
    if report:
        _write_section(report, res, command=f"make bench ({_command()})",
                       image=os.path.relpath(plot_out, report.parent) if plot_out else None)


def bench_os_features(
    dataset: str = typer.Option("scifact", help="Dataset whose corpus to load into osmem and whose queries to send "
                                "(its embedded index must be built)."),
    split: str = typer.Option("test"),
    candidates: list[int] = typer.Option([100, 200], min=1, help="Candidates per query: the BM25 retriever's k and "
                                         "fusion keep (repeatable)."),
    limit: Optional[int] = typer.Option(100, min=1, help="Only the first N judged queries."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """Time the OpenSearch keyword-feature round trip against osmem on loopback, beside the embedded backend."""
    _setup()
    from cascade.bench import os_features as bench
    from cascade.datasets import corpus_file
    from connectors.embedded import index_exists

    try:
        bench.require_osmem()
        queries, qrels = _judged(dataset, split)
        cfg = _config_for(dataset, None, create=False)
        if cfg.backend.type != "embedded":
            raise CascadeError(f"the config of {dataset} has backend.type: {cfg.backend.type}; the benchmark compares "
                               f"osmem with the dataset's embedded index")
        if not index_exists(cfg, _settings()):
            raise CascadeError(f"index {cfg.index} is not built; run `cascade index --dataset {dataset}` "
                               f"(or `cascade demo --prepare-only`) first")
        corpus = corpus_file(_dataset_dir(dataset))
        texts = [queries[q] for q in qrels if q in queries][:limit]
        levels = list(dict.fromkeys(candidates))
        res = _with_progress("osmem + embedded features", len(texts) * len(levels) * 2, lambda on_progress: bench.run(
            cfg, _settings(), corpus, texts, candidates=levels, dataset=dataset, split=split, on_progress=on_progress,
            on_step=lambda s: err.print(f"[dim]{s}[/]")))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    for t in res.tables()[:-1]:
        console.print(t)
    _show(res, report, command=f"make bench ({_command()})")


def bench_backends_cmd(
    dataset: str = typer.Option("scifact", help="Dataset with a built index and a cross_encoder stage in its config."),
    split: str = typer.Option("test", help="qrels split (for minilm-l6-ce-v1 only SciFact test is clean)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    depth: int = typer.Option(20, min=1, help="Fused candidates scored per query."),
    onnx: Optional[Path] = typer.Option(None, help="Folder from `cascade models export-onnx` "
                                        "(default: CASCADE_TRAINED_DIR/MODEL-onnx)."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """Score the same top fused candidates with torch fp32, torch bf16, ONNX fp32 and ONNX int8: pairs/s and nDCG@10."""
    _setup()
    from cascade.bench.backends import backend_notes, compare_backends, load_backends, onnx_folder
    from cascade.builder import open_cascade

    try:
        s = _settings()
        queries, qrels = _judged(dataset, split)
        if limit:
            qrels = dict(list((q, r) for q, r in qrels.items() if q in queries)[:limit])
        cfg, ce = _pair_stage_config(dataset)
        onnx_dir = onnx_folder(ce, s, onnx)
        casc = open_cascade(cfg, s, stages=False)  # retrieval and fusion: the backends score its candidates
        scorers = load_backends(ce, s, onnx_dir)
        res = _with_progress(f"scoring {dataset} {split} with {len(scorers)} backends", len(qrels),
                             lambda on_progress: compare_backends(
                                 casc, queries, qrels, scorers, ce.text_fields(), depth=depth, on_progress=on_progress,
                                 model=ce.model, dataset=dataset, split=split))
        if report:
            res.notes = backend_notes(ce, s, onnx_dir)
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    _show(res, report)


def bench_microbatch_cmd(
    dataset: str = typer.Option("scifact", help="Dataset with a built index and a cross_encoder stage in its config."),
    split: str = typer.Option("test", help="Queries of this qrels split."),
    limit: Optional[int] = typer.Option(96, min=1, help="Only the first N judged queries."),
    depth: int = typer.Option(20, min=1, help="Fused candidates scored per query."),
    clients: str = typer.Option("8", help="Concurrent clients; a comma list runs each in turn (e.g. 4,8)."),
    max_wait_ms: float = typer.Option(2.0, min=0, help="Micro-batcher: longest wait for company."),
    max_pairs: int = typer.Option(256, min=1, help="Micro-batcher: most pairs per model pass."),
    backend: str = typer.Option("torch", help="torch (the config's model and dtype) or onnx (an export's int8 graph)."),
    torch_threads: str = typer.Option("", help="torch: intra-op thread counts to run in turn, e.g. 2,1 "
                                      "(default: as configured, CASCADE_TORCH_THREADS or torch's own)."),
    onnx: Optional[Path] = typer.Option(None, help="onnx: folder from `cascade models export-onnx` "
                                        "(default: CASCADE_TRAINED_DIR/MODEL-onnx)."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """Concurrent clients through per-request threads vs the micro-batcher: pairs/s, queries/s, p50/p95."""
    _setup()
    from cascade.bench.backends import onnx_folder
    from cascade.bench.microbatch import collect_requests, run_microbatch
    from cascade.builder import open_cascade

    try:
        counts = [int(c) for c in clients.split(",") if c.strip()]
        threads = [int(c) for c in torch_threads.split(",") if c.strip()]
        if not counts or min(counts) < 1 or min(threads, default=1) < 1:
            raise ValueError(f"--clients {clients!r} / --torch-threads {torch_threads!r}: positive integers, e.g. 4,8")
        if threads and backend != "torch":
            raise ValueError("--torch-threads is for --backend torch (ONNX Runtime: CASCADE_TORCH_THREADS)")
        if backend not in ("torch", "onnx"):
            raise ValueError(f"--backend {backend!r}: torch or onnx (micro-batching is for local backends)")
        s = _settings()
        queries, qrels = _judged(dataset, split)
        texts = [queries[q] for q in qrels if q in queries][:limit]
        cfg, ce = _pair_stage_config(dataset)
        if backend == "onnx":
            ce = ce.model_copy(update={"backend": "onnx", "model": str(onnx_folder(ce, s, onnx)), "fallback": [],
                                       "dtype": "auto", "onnx_file": "model.int8.onnx"})
        runtime = ce.load_runtime(s)  # blocking, in this process: both modes drive the same runtime
        casc = open_cascade(cfg, s, stages=False)
        requests = collect_requests(casc, texts, ce.text_fields(), depth)
        with _progress() as prog:
            tasks: dict[str, int] = {}

            def on_progress(label: str, done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = prog.add_task(label, total=None)
                prog.update(tasks[label], completed=done, total=total)

            res = run_microbatch(runtime, requests, clients=counts, threads=threads or None, max_wait_ms=max_wait_ms,
                                 max_pairs=max_pairs, depth=depth, backend=backend, max_length=ce.max_length,
                                 batch_size=ce.batch_size, dataset=dataset, split=split, on_progress=on_progress)
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    console.print(res.table())
    err.print(res.load_line())
    if report:
        _write_section(report, res)


def bench_llm(
    dataset: str = typer.Option("scifact", help="Dataset whose judged queries to rank (its index must be built)."),
    split: str = typer.Option("test"),
    index_name: Optional[str] = typer.Option(None, "--index", help="Index (default: the dataset's name)."),
    url: str = typer.Option("http://127.0.0.1:8091", help="The OpenAI-compatible server (llama.cpp, vLLM, ...)."),
    model: str = typer.Option("qwen2.5-coder-1.5b-instruct", help="Model name sent to the server."),
    rerank: int = typer.Option(5, min=1, help="Documents the LLM stage judges (the top of the previous step)."),
    max_move: int = typer.Option(5, min=1, help="No document moves more than this many places."),
    window: int = typer.Option(5, min=2, help="Listwise window."),
    stride: int = typer.Option(3, min=1, help="Listwise stride."),
    constrain: str = typer.Option("json_object", help="Listwise JSON constraint: json_schema, json_object, none."),
    max_doc_chars: int = typer.Option(1200, min=50, help="Each document is cut to this many characters."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N judged queries."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the settings and per-method rows as JSON."),
    methods: str = typer.Option("pointwise,listwise", help="Which methods to run, comma-separated."),
    timeout_s: float = typer.Option(120.0, min=1, help="Per LLM request (a slow CPU under load needs more)."),
) -> None:
    """nDCG@10 before and after the LLM stage (pointwise and listwise), with its latency, calls and tokens."""
    _setup()
    from cascade.bench import llm as bench

    try:
        queries, qrels = _judged(dataset, split)
        cfg = _config_for(index_name or dataset, None, create=False)
        n = min(limit or len(qrels), len(qrels))
        res = _with_progress(f"LLM stage on {n} queries", n, lambda on_progress: bench.run(
            cfg, _settings(), queries, qrels, dataset=dataset, split=split, url=url, model=model, rerank=rerank,
            max_move=max_move, window=window, stride=stride, constrain=constrain, max_doc_chars=max_doc_chars,
            limit=limit, methods=tuple(m.strip() for m in methods.split(",") if m.strip()), timeout_s=timeout_s,
            on_progress=on_progress))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    _show(res, report)
    if json_out:
        import dataclasses

        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(dataclasses.asdict(res), indent=2))


def bench_rerank_api(
    dataset: str = typer.Option("scifact", help="Dataset whose abstracts and test queries to send (no index needed)."),
    split: str = typer.Option("test", help="Queries of this qrels split."),
    sizes: str = typer.Option("20,100,1000", help="Documents per request, a comma list."),
    requests: int = typer.Option(20, min=3, help="Requests per size (a quarter, at least 5, for 1,000 and more); "
                                 "a p95 needs 20, fewer report the maximum."),
    report: Optional[Path] = typer.Option(None, help="Update this Markdown file's section."),
) -> None:
    """POST /v2/rerank beside the same pairs ranked in-process: latency p50/p95 and documents per second."""
    _setup()
    from itertools import islice

    from cascade.bench import rerank_api as bench
    from cascade.datasets import corpus_file, iter_corpus

    try:
        counts = [int(c) for c in sizes.split(",") if c.strip()]
        if not counts or min(counts) < 1:
            raise ValueError(f"--sizes {sizes!r}: positive integers, e.g. 20,100,1000")
        queries, qrels = _judged(dataset, split)
        texts = [queries[q] for q in qrels if q in queries]
        _, ce = _pair_stage_config(dataset)
        docs = [rec for _, rec in islice(iter_corpus(corpus_file(_dataset_dir(dataset))), max(counts) * 2)]
        res = _with_progress("rerank requests", None, lambda on_progress: bench.run(
            {"type": ce.type, **ce.model_dump(mode="json", exclude_defaults=True)}, _settings(), dataset, texts, docs,
            sizes=counts,
            requests=requests, on_step=lambda s: err.print(f"[dim]{s}[/]"), on_progress=on_progress))
    except (CascadeError, ValueError) as exc:
        _fail(exc)
        return
    _show(res, report, command=f"make bench ({_command()})")
