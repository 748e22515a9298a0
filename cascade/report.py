"""Turning an evaluation into things people read: a terminal table, Markdown, a plot, machine facts."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

from rich.table import Table

from cascade.evaluation import EvalReport
from cascade.plots import save_figure


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        pass
    try:
        import torch

        tv = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        tv = ""
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}{tv}, no GPU"


def step_costs(stages: list) -> list[str]:
    """Each step's own work per query in its unit ("10 pairs", "170 rows"; "" for none), from the cumulative costs."""
    out, before = [], {}
    for s in stages:
        cum = getattr(s, "cost_per_query", None) or {}
        own = {u: v - before.get(u, 0.0) for u, v in cum.items() if v - before.get(u, 0.0) > 0}
        out.append(", ".join(f"{v:.0f} {u}" for u, v in sorted(own.items())) or "-")
        before = {**before, **cum}
    return out


def rich_table(rep: EvalReport) -> Table:
    """The per-step table for a terminal: fits 80 columns and never cuts a number (step names wrap instead).

    R@30 and the step-alone p50 are left to the JSON and Markdown outputs, which have the room.
    """
    title = f"{rep.dataset} {rep.split}: {rep.queries} queries, cascade {rep.index} v{rep.config_version}"
    profile = getattr(rep, "profile", None)  # newer reports say which machine profile they ran under
    if isinstance(profile, str) and profile:
        title += f", profile {profile}"
    stages = list(rep.stages)
    best = max((s.ndcg_10 for s in stages), default=None)
    headers = ["nDCG@10", "R@100", "MRR@10", "p50 ms", "p95 ms", "cost/q"]
    costs = step_costs(stages)
    rows = [[f"{s.ndcg_10:.4f}", f"{s.recall_100:.4f}", f"{s.mrr_10:.4f}", f"{s.p50_ms:.1f}", f"{s.p95_ms:.1f}",
             c] for s, c in zip(stages, costs)]
    t = Table(title=title, caption="ms: cumulative p50/p95 up to the step; cost/q: the step's own work per query, "
                                   "in its cost unit", caption_justify="left")
    t.add_column("step", overflow="fold", min_width=4)
    for i, h in enumerate(headers):
        width = max([len(h), *(len(r[i]) for r in rows)])
        t.add_column(h, justify="right", no_wrap=True, min_width=width)
    for s, r in zip(stages, rows):
        if s.ndcg_10 == best:
            r[0] = f"[bold green]{r[0]}[/]"
        t.add_row(s.name, *r)
    return t


def markdown_table(rep: EvalReport) -> str:
    lines = ["| step | nDCG@10 | R@30 | R@100 | MRR@10 | p50 ms | p95 ms | step p50 ms | cost/query |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, c in zip(rep.stages, step_costs(list(rep.stages))):
        lines.append(f"| {s.name} | {s.ndcg_10:.4f} | {s.recall_30:.4f} | {s.recall_100:.4f} | {s.mrr_10:.4f} | {s.p50_ms:.1f} | "
                     f"{s.p95_ms:.1f} | {s.step_p50_ms:.1f} | {c} |")
    return "\n".join(lines)


def plot(rep: EvalReport, path: Path) -> Path:
    """nDCG@10 against cumulative p50 latency, one point per step: the cost of each step at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [s.name for s in rep.stages]
    colors = ["#7f7f7f" if s.kind == "retriever" else "#1f77b4" if s.kind == "fusion" else "#d62728"
              for s in rep.stages]
    bars = ax1.bar(names, [s.ndcg_10 for s in rep.stages], color=colors)
    ax1.bar_label(bars, fmt="%.3f")
    ax1.set_ylabel("nDCG@10")
    ax1.set_ylim(0, max(s.ndcg_10 for s in rep.stages) * 1.18)
    ax1.set_title("Quality per step")
    for s, c in zip(rep.stages, colors):
        ax2.scatter(max(s.p50_ms, 0.1), s.ndcg_10, color=c, s=60)
        ax2.annotate(s.name, (max(s.p50_ms, 0.1), s.ndcg_10), textcoords="offset points", xytext=(6, 4))
    ax2.set_xscale("log")
    ax2.set_xlabel("p50 latency up to this step (ms, log)")
    ax2.set_ylabel("nDCG@10")
    ax2.set_title("Quality against latency")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{rep.dataset} {rep.split} ({rep.queries} queries), cascade {rep.index} v{rep.config_version}")
    return save_figure(fig, path)


def markdown_section(rep: EvalReport, command: str, image: str | None) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    plan = " → ".join(
        f"{p['name']}" + (f" (k={p['k']})" if p.get("type") in ("bm25", "knn") else "")
        + (f" (rerank {p['rerank']})" if p.get("rerank") else "")
        + (f" (keep {p['keep']})" if p.get("keep") else "") for p in rep.plan)
    out = [f"Command: `{command}`  ", f"Machine: {machine()}  ", f"Run: {when}, {rep.seconds:.0f} s for "
           f"{rep.queries} queries  ", f"Cascade: {plan}", "", markdown_table(rep), ""]
    if image:
        out += [f"![{rep.dataset} per-step quality and latency]({image})", ""]
    out += ["p50/p95 ms are cumulative (search start to the end of that step; a retriever's own time for "
            "bm25/knn, which run concurrently); step p50 is the step alone. cost/query is the step's own work "
            "per query in the unit its stage declares (pairs for a cross-encoder, rows for LTR).", ""]
    return "\n".join(out)


def update_section(doc: Path, key: str, title: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- key:start -->`` and ``<!-- key:end -->``."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n## {title}\n\n{body}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n\nEvery number here was produced by the command printed with it.\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")


def plot_pareto(summary: dict[str, dict], title: str, path: Path) -> Path:
    """nDCG@10 against p95 latency: the cascade at several cross-encoder depths, and the naive pipeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve = sorted((v["p95_ms"], v["ndcg@10"], k) for k, v in summary.items() if k.startswith("cascade"))
    ax.plot([c[0] for c in curve], [c[1] for c in curve], "-o", color="#d62728", label="cascade (CE depth varies)")
    for x, y, k in curve:
        ax.annotate(k.replace("cascade@", "CE@") if "@" in k else "default", (x, y), textcoords="offset points",
                    xytext=(5, 5))
    nv = summary["naive"]
    ax.scatter([nv["p95_ms"]], [nv["ndcg@10"]], color="#7f7f7f", s=70, zorder=3, label="naive: BM25 100 + CE on all")
    ax.annotate("naive", (nv["p95_ms"], nv["ndcg@10"]), textcoords="offset points", xytext=(-40, 6))
    ax.set_xscale("log")
    ax.set_xlabel("p95 latency per query (ms, log)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"{title}: quality against latency")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    return save_figure(fig, path)
