"""What ``cascade plan`` and ``cascade plan-check`` print and write: tables (80 columns), Markdown, a chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from cascade.plots import save_figure

Report = dict[str, Any]


def _n(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def options_table(r: Report) -> Table:
    t = Table(title=f"{r['docs']:,} documents at {r['qps']:g} queries/s, p95 <= {r['p95_target_ms']:g} ms "
                    f"(gpu: {r['gpu']})", box=box.SIMPLE_HEAD,
              caption="one row per cross-encoder depth tune measured; * recommended", caption_justify="left")
    for c in ("CE depth", "nDCG@10", "replicas", "GPUs", "OS nodes", "shards", "p50 ms", "p95 ms"):
        t.add_column(c, justify="right", no_wrap=True)
    rec = (r.get("recommended") or {}).get("cross_encoder_depth")
    for o in r["options"]:
        mark = "*" if o["cross_encoder_depth"] == rec else ""
        if o["feasible"]:
            t.add_row(f"{mark}{o['cross_encoder_depth']}", f"{o['ndcg@10_measured']:.4f}", str(o["replicas"]),
                      str(o["gpus"]), str(o["opensearch_nodes"]), str(o["shards"]), _n(o["p50_ms"]), _n(o["p95_ms"]))
        else:
            t.add_row(str(o["cross_encoder_depth"]), f"{o['ndcg@10_measured']:.4f}", "-", "-", "-", "-", "-", "-")
    return t


def memory_table(r: Report) -> Table:
    m = r["memory"]
    t = Table(title="OpenSearch vector memory", box=box.SIMPLE_HEAD, show_header=False)
    t.add_column("", overflow="fold")
    t.add_column("", justify="right")
    rec = r.get("recommended") or {}
    nodes = rec.get("opensearch_nodes") or m["nodes_for_vectors"]
    for k, v in (("bytes per vector per copy", f"{m['bytes_per_vector_per_copy']:,.0f} ({m['encoding']})"),
                 ("copies (primary + replicas)", str(m["copies"])),
                 ("vectors, all copies", f"{m['vectors_total_gib']:,.1f} GiB"),
                 ("k-NN memory per node", f"{m['knn_budget_per_node_gib']:.1f} GiB of {m['node_ram_gib']:g} GiB"),
                 ("nodes the vectors need", str(m["nodes_for_vectors"])),
                 ("vectors per node (planned nodes)", f"{m['vectors_total_gib'] / nodes:,.1f} GiB on {nodes}"),
                 ("JVM heap per node", f"{m['heap_per_node_gib']:g} GiB")):
        t.add_row(k, v)
    return t


def assumptions_table(r: Report) -> Table:
    t = Table(title="every input and where it comes from", box=box.SIMPLE_HEAD, show_lines=False)
    t.add_column("what", overflow="fold", ratio=3)
    t.add_column("value", overflow="fold", ratio=2)
    t.add_column("source", overflow="fold", ratio=3)
    for a in r["assumptions"]:
        v = a["value"] if isinstance(a["value"], str) else f"{a['value']:g} {a.get('unit', '')}".strip()
        t.add_row(a["what"], v, a["source"])
    return t


def tables(r: Report) -> list[Table]:
    return [options_table(r), memory_table(r), assumptions_table(r)]


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def markdown(r: Report, command: str, machine: str, image: str | None = None) -> str:
    rec = r.get("recommended")
    out = [f"Command: `{command}`  ", f"Machine: {machine}  ", f"Measured inputs from: `{r['measured_on']}`", ""]
    if rec:
        out += [f"**Recommended:** cross-encoder depth {rec['cross_encoder_depth']} (nDCG@10 "
                f"{rec['ndcg@10_measured']:.4f} where it was measured), "
                f"{_count(rec['replicas'], 'cascade replica')}, {_count(rec['gpus'], 'GPU rerank server')}, "
                f"{_count(rec['opensearch_nodes'], 'OpenSearch data node')} with "
                f"{rec['shards']} primary shards; predicted p50 {rec['p50_ms']:.0f} ms and **p95 {rec['p95_ms']:.0f} ms** "
                f"at {r['qps']:g} queries/s (target {r['p95_target_ms']:g} ms). These counts carry the load; "
                "run at least one more of each pool that has a single server, so that losing one does not stop "
                "search.", ""]
    else:
        out += ["No depth meets the target with any fleet (see the notes per depth).", ""]
    out += ["| CE depth | nDCG@10 (measured) | replicas | GPUs | OpenSearch nodes | shards | p50 ms | p95 ms | "
            "utilization (replica / OpenSearch / GPU) | note |", "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for o in r["options"]:
        if o["feasible"]:
            u = o["utilization"]
            out.append(f"| {o['cross_encoder_depth']} | {o['ndcg@10_measured']:.4f} | {o['replicas']} | {o['gpus']} | "
                       f"{o['opensearch_nodes']} | {o['shards']} | {o['p50_ms']:.0f} | {o['p95_ms']:.0f} | "
                       f"{u.get('replica', 0):.2f} / {u.get('opensearch', 0):.2f} / {u.get('gpu', 0):.2f} | |")
        else:
            out.append(f"| {o['cross_encoder_depth']} | {o['ndcg@10_measured']:.4f} | - | - | - | - | - | - | - | "
                       f"{o['note']} |")
    m = r["memory"]
    out += ["", f"Vector memory: {m['bytes_per_vector_per_copy']:,.0f} bytes per vector per copy ({m['encoding']}, "
            f"{r['dims']} dimensions), {m['vectors_total_gib']:,.1f} GiB over {m['copies']} copies; "
            f"{m['knn_budget_per_node_gib']:.1f} GiB of k-NN memory per {m['node_ram_gib']:g} GiB node (heap "
            f"{m['heap_per_node_gib']:g} GiB), so the vectors alone need {m['nodes_for_vectors']} nodes.", "",
            "| input | value | source |", "|---|---|---|"]
    for a in r["assumptions"]:
        v = a["value"] if isinstance(a["value"], str) else f"{a['value']:g} {a.get('unit', '')}".strip()
        src = a["source"] + (f" ({a['url']})" if a.get("url") else "")
        out.append(f"| {a['what']} | {v} | {src} |")
    if image:
        out += ["", f"![plan]({image})"]
    return "\n".join(out + [""])


def plot(r: Report, path: Path) -> Path:
    """p95 against the bottleneck pool's size, quality against cross-encoder depth, recall@k per retriever."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    curve = r.get("p95_curve") or []
    if curve:
        pool = curve[0]["pool"]
        xs = [c["size"] for c in curve if c["p95_ms"] is not None]
        ys = [c["p95_ms"] for c in curve if c["p95_ms"] is not None]
        ax.plot(xs, ys, "-o", color="#d62728")
        ax.axhline(r["p95_target_ms"], color="#2ca02c", ls="--", label=f"target {r['p95_target_ms']:g} ms")
        rec = r["recommended"]
        have = rec["gpus"] if pool == "gpu" else rec["replicas"]
        ax.axvline(have, color="#7f7f7f", ls=":", label=f"planned: {have}")
        ax.set_xlabel({"gpu": "GPU rerank servers", "replica": "cascade replicas"}[pool])
        ax.set_ylabel("simulated p95 latency (ms)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_title(f"{r['docs']:,} docs at {r['qps']:g} q/s")
    ax.grid(alpha=0.3)
    ax = axes[1]
    feas = [o for o in r["options"]]
    ax.plot([o["cross_encoder_depth"] for o in feas], [o["ndcg@10_measured"] for o in feas], "-o", color="#1f77b4")
    for o in feas:
        if o["feasible"]:
            ax.annotate(f"{o['gpus']} GPU, {o['replicas']} rep", (o["cross_encoder_depth"], o["ndcg@10_measured"]),
                        textcoords="offset points", xytext=(4, -12), fontsize=7)
    if r.get("recommended"):
        rec = r["recommended"]
        ax.scatter([rec["cross_encoder_depth"]], [rec["ndcg@10_measured"]], marker="*", s=200, color="#d62728",
                   zorder=5, label="recommended")
        ax.legend(fontsize=8)
    ax.set_xlabel("cross-encoder depth (0: off)")
    ax.set_ylabel("nDCG@10 (measured by cascade tune)")
    ax.set_title("quality against depth")
    ax.grid(alpha=0.3)
    ax = axes[2]
    for name, c in (r.get("recall_at_k") or {}).items():
        ks = sorted(int(k) for k in c)
        ax.plot(ks, [c[str(k)] if str(k) in c else c[k] for k in ks], "-o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k (measured collection)")
    ax.set_title("candidates: recall@k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def check_table(c: Report) -> Table:
    t = Table(title=f"simulator against this machine: {c['dataset']} {c['split']}, one replica (FIFO)",
              box=box.SIMPLE_HEAD, caption=f"service time alone: mean {c['service_alone_ms']['mean']:.0f} ms, p95 "
                                           f"{c['service_alone_ms']['p95']:.0f} ms", caption_justify="left")
    for col in ("q/s", "util", "meas p50", "sim p50", "meas p95", "sim p95", "p95 err"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in c["rates"]:
        err = (r["simulated_p95"] - r["measured_p95"]) / r["measured_p95"]
        t.add_row(f"{r['rate']:g}", f"{r['utilization']:.2f}", _n(r["measured_p50"]), _n(r["simulated_p50"]),
                  _n(r["measured_p95"]), _n(r["simulated_p95"]), f"{err:+.0%}")
    return t


def check_markdown(c: Report, command: str, machine: str) -> str:
    s = c["service_alone_ms"]
    out = [f"Command: `{command}`  ", f"Machine: {machine}  ",
           f"{c['query_pool']} {c['dataset']} {c['split']} queries; each first run alone (service time: mean "
           f"{s['mean']:.0f} ms, p50 {s['p50']:.0f}, p95 {s['p95']:.0f}); then Poisson arrivals at each rate into one "
           f"FIFO slot, and the simulator given the same arrivals and the service times measured alone.", "",
           "| queries/s | utilization | queries | measured p50 | predicted p50 | measured p95 | predicted p95 | "
           "p95 error | service during the run | replay p50 / p95 |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in c["rates"]:
        err = (r["simulated_p95"] - r["measured_p95"]) / r["measured_p95"]
        out.append(f"| {r['rate']:g} | {r['utilization']:.2f} | {r['queries']} | {r['measured_p50']:.0f} | "
                   f"{r['simulated_p50']:.0f} | {r['measured_p95']:.0f} | {r['simulated_p95']:.0f} | {err:+.0%} | "
                   f"{r['service_during_ms']:.0f} ms | {r['replay_p50']:.0f} / {r['replay_p95']:.0f} |")
    out += ["", "Predicted: the simulator with the service times measured alone (what `cascade plan` does). Replay: "
            "the simulator with each query's service time in the run itself, which isolates the queueing "
            "arithmetic from the drift of service times under the machine's other load. Latencies in ms."]
    return "\n".join(out + [""])
