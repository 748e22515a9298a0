"""What ``cascade tune`` prints and writes, all from its JSON report: terminal tables (80 columns), a Markdown
section and the Pareto-front plot (so a saved report can be read again without re-running anything)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from cascade.plots import save_figure

Report = dict[str, Any]


def _work(v: Report) -> str:
    for k, x in v.items():
        if k.endswith("_per_query") and k not in ("ms_per_query", "calls_per_query") and x:
            return f"{x:.0f} {k.removesuffix('_per_query')}"
    return "-"


def _ci(v: Report, digits: int = 3) -> str:
    return f"[{v['ci_low']:+.{digits}f},{v['ci_high']:+.{digits}f}]"


def steps_table(r: Report) -> Table:
    t = Table(title=f"{r['dataset']} {r['split']}: each step's gain in nDCG@10 over the step before it "
                    f"({r['queries']} queries)", box=box.SIMPLE_HEAD,
              caption="95% paired bootstrap interval over queries, settings chosen on other folds; "
                      "a step pays when the interval is above 0", caption_justify="left")
    t.add_column("step", overflow="fold", min_width=6)
    t.add_column("over", overflow="fold", min_width=4, max_width=13)
    for c in ("gain", "95% CI", "ms/q", "work/q", "pays"):
        t.add_column(c, justify="right", no_wrap=True)
    for v in r["stages"]:
        over = "w/o it" if v["compared_to"] == "fusion without it" else v["compared_to"]
        t.add_row(v["name"], over, f"{v['marginal_ndcg@10']:+.4f}", _ci(v), f"{v['ms_per_query']:.1f}", _work(v),
                  "[green]yes[/]" if v["pays"] else "[red]no[/]")
    return t


def final_table(r: Report) -> Table | None:
    rows = [v for v in r["stages"] if "final_with_minus_without" in v]
    if not rows:
        return None
    t = Table(title="each stage's effect on the final ranking: with it against the best without it",
              box=box.SIMPLE_HEAD)
    for c in ("stage", "with - without", "95% CI", "pays by"):
        t.add_column(c, justify="left" if c == "stage" else "right", overflow="fold")
    for v in rows:
        t.add_row(v["name"], f"{v['final_with_minus_without']:+.4f}",
                  f"[{v['final_ci_low']:+.4f}, {v['final_ci_high']:+.4f}]", v.get("pays_by") or "-")
    return t


def summary_table(r: Report) -> Table:
    t = Table(title="current profile against the proposal", box=box.SIMPLE_HEAD)
    for c in ("", "queries", "nDCG@10", "ms/q"):
        t.add_column(c, justify="left" if not c else "right", overflow="fold")
    cv, n = r["cross_validation"], str(r["queries"])
    t.add_row(f"{r['split']}, {cv['folds']}-fold CV: current", n, f"{cv['current_ndcg@10']:.4f}",
              f"{cv['current_ms_per_query']:.1f}")
    t.add_row(f"{r['split']}, CV: tuned {_ci(cv['gain'], 4)}", n, f"{cv['tuned_ndcg@10']:.4f}",
              f"{cv['tuned_ms_per_query']:.1f}")
    h = r.get("holdout")
    if h:
        for k in ("current", "proposed_without_early_exit", "proposed", "best_on_holdout"):
            p = h[k]
            t.add_row(f"{h['split']}: {p['label']}", str(h["queries"]), f"{p['ndcg@10']:.4f}",
                      f"{p['ms_per_query']:.1f}")
    return t


def tables(r: Report) -> list[Table]:
    return [t for t in (steps_table(r), final_table(r), summary_table(r)) if t is not None]


def markdown(r: Report, command: str, machine: str, image: str | None = None) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    out = [f"Command: `{command}`  ",
           f"Machine: {machine}; load average at the end {load} (the 2 cores are shared: measured costs carry "
           f"that load)  ",
           f"Run: {when}, {r['seconds']:.0f} s; {r['queries']} {r['dataset']} {r['split']} queries "
           f"({r['mode']}), {r['settings_swept']:,} settings ({r['fusion_variants']} fusion variants x stage "
           f"options), tolerance {r['tolerance']:g} nDCG@10, {r['folds']} folds by query", "",
           "| step | over | gain nDCG@10 | 95% CI | final: with - without | 95% CI | ms/query | work/query | pays | "
           "setting |", "|---|---|---:|---|---:|---|---:|---:|---|---|"]
    for v in r["stages"]:
        fin = (f"{v['final_with_minus_without']:+.4f} | [{v['final_ci_low']:+.4f},{v['final_ci_high']:+.4f}]"
               if "final_with_minus_without" in v else "- | -")
        out.append(f"| {v['name']} | {v['compared_to']} | {v['marginal_ndcg@10']:+.4f} | {_ci(v, 4)} | {fin} | "
                   f"{v['ms_per_query']:.1f} | {_work(v)} | {'yes' if v['pays'] else '**no**'} | "
                   f"{v.get('setting', '')} |")
    out += ["", "Gains are measured on held-out folds with the settings chosen on the other folds (retrievers: the "
            "fused list against the fused list without them; fusion: against the best single retriever; a stage: "
            "against the step before it, and the cascade's final ranking with it against the best final ranking "
            "without it). A stage pays when either interval is above 0. ms/query is the step's own modelled cost "
            "in core-milliseconds (a stage reading features includes them).", "", "Today's profile, step by step (no choice involved, all queries):", "",
            "| step | nDCG@10 | over | gain | 95% CI |", "|---|---:|---|---:|---|"]
    for s in r["current_profile_steps"]:
        out.append(f"| {s['name']} | {s['ndcg@10']:.4f} | {s['compared_to']} | {s['marginal_ndcg@10']:+.4f} | "
                   f"{_ci(s, 4)} |")
    cv = r["cross_validation"]
    g = cv["gain"]
    out += ["", f"Cross-validated ({cv['folds']} folds; the whole procedure re-run on each training part): tuned "
            f"**{cv['tuned_ndcg@10']:.4f}** at {cv['tuned_ms_per_query']:.0f} ms/query against current "
            f"{cv['current_ndcg@10']:.4f} at {cv['current_ms_per_query']:.0f} ms/query (difference "
            f"{g['mean']:+.4f}, 95% CI {_ci(g, 4)}).", ""]
    h = r.get("holdout")
    if h:
        out += [f"Held out: {h['split']} ({h['queries']} queries), never read by any choice:", "",
                "| profile | nDCG@10 | ms/query | setting |", "|---|---:|---:|---|"]
        for k in ("current", "proposed_without_early_exit", "proposed", "best_on_holdout"):
            p = h[k]
            out.append(f"| {p['label']} | {p['ndcg@10']:.4f} | {p['ms_per_query']:.1f} | {p['setting']} |")
        vb, vc = h["proposed_minus_best"], h["proposed_minus_current"]
        ratio = h.get("cost_ratio_proposed_to_current")
        out += ["", f"Proposed minus best-on-{h['split']}: {vb['mean']:+.4f} (95% CI {_ci(vb, 4)}: "
                f"{'within noise' if h['within_noise_of_best'] else 'significantly worse'}); proposed minus current: "
                f"{vc['mean']:+.4f} ({_ci(vc, 4)}); cost {ratio:.2f}x the current profile's.", ""]
    for e in r["early_exit"]:
        line = f"Early exit for {e['stage']} (target {e['target_share_of_gain']:.0%} of its gain): {e['reason']}."
        if e["out_of_fold"]:
            line += " Out of fold on " + r["split"] + ": " + "; ".join(
                f"{k} keeps {v['kept_share']:.0%} of the gain and saves {v['saved_share']:.0%} of the pairs"
                for k, v in e["out_of_fold"].items()) + "."
        if h and e["stage"] in h["early_exit"]:
            x = h["early_exit"][e["stage"]]
            what = ("On " + h["split"] if x.get("in_proposal", True) else
                    f"Not in the proposal; the {x['signal']} fitted on {r['split']} (threshold {x['threshold']:.3g}), "
                    f"applied on {h['split']}")
            line += (f" {what}: keeps {x['kept_share']:.0%} of the gain and saves {x['saved_share']:.0%} "
                     f"of the pairs ({x['exited_share']:.0%} of queries exit).")
        out += [line, ""]
    if r["notes"]:
        out += ["Notes:", ""] + [f"- {n}" for n in r["notes"]] + [""]
    if image:
        out += [f"![quality against cost of every setting]({image})", ""]
    if r["diff"].strip():
        out += [f"Proposed profile `{r['proposal']['name']}` (diff against `{r['profile']}`, both as they resolve):",
                "", "```diff", r["diff"].rstrip(), "```", ""]
    else:
        out += [f"Proposed profile `{r['proposal']['name']}`: the same as `{r['profile']}` as it resolves "
                "(every step pays at its current setting; nothing to change).", ""]
    return "\n".join(out)


def plot(r: Report, path: Path) -> Path:
    """Quality against modelled cost for every setting, its Pareto front, the current and proposed points; the
    held-out split beside it, and the early-exit trade-off when one was tuned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    h = r.get("holdout")
    exits = list((h or {}).get("early_exit", {}).items())
    n = 1 + bool(h) + bool(exits)
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 4.6))
    axes = list(np.atleast_1d(axes))

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def panel(ax, cloud, front, cur, prop, title, best=None, prop_exit=None, cv=None):
        ax.scatter([x for x, _ in cloud], [y for _, y in cloud], s=5, color="#c7c7c7", label="settings swept")
        ax.plot([x for x, _ in front], [y for _, y in front], "-", color="#1f77b4", lw=1.5, label="Pareto front",
                drawstyle="steps-post")
        ax.scatter([cur[0]], [cur[1]], marker="X", s=110, color="black", zorder=4, label="current")
        ax.scatter([prop[0]], [prop[1]], marker="*", s=220, color="#d62728", zorder=5, label="proposed")
        if prop_exit is not None:
            ax.scatter([prop_exit[0]], [prop_exit[1]], marker="*", s=150, color="#ff9896", edgecolor="#d62728",
                       zorder=5, label="proposed + early exit")
        if best is not None:
            ax.scatter([best[0]], [best[1]], marker="D", s=60, color="#2ca02c", zorder=4, label="best on this split")
        if cv is not None:
            ax.scatter([cv[0]], [cv[1]], marker="*", s=200, facecolor="none", edgecolor="#d62728", zorder=5,
                       label="tuned, cross-validated")
        lo = min(y for _, y in front) if front else 0
        ax.set_ylim(max(lo - 0.05, min(y for _, y in cloud)), max(y for _, y in cloud) + 0.01)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("modelled cost per query (core-ms, log)")
        ax.set_ylabel("nDCG@10")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)

    def xy(p):
        return p["ms_per_query"], p["ndcg@10"]

    with_exit = any(e["chosen"] for e in r["early_exit"])
    front = [xy(p) for p in r["pareto_front"]]
    cv = r["cross_validation"]
    panel(axes[0], r["cloud"], front, xy(r["current"]), xy(r["chosen_without_early_exit"]),
          f"{r['dataset']} {r['split']} (tuning, {r['queries']} queries)", prop_exit=xy(r["tuned"]) if with_exit else None,
          cv=(cv["tuned_ms_per_query"], cv["tuned_ndcg@10"]))
    if h:
        panel(axes[1], h["cloud"], h["front"], xy(h["current"]), xy(h["proposed_without_early_exit"]),
              f"{r['dataset']} {h['split']} (held out, {h['queries']} queries)", best=xy(h["best_on_holdout"]),
              prop_exit=xy(h["proposed"]) if with_exit else None)
    if exits:
        ax = axes[-1]
        for stage, x in exits:
            c = x["curve"]
            ax.plot([a for a, _ in c], [k for _, k in c], "-", color="#d62728",
                    label=f"{x['signal']} (fitted on {r['split']})")
            if x["signal"] != "margin":
                m = x["margin_curve"]
                ax.plot([a for a, _ in m], [k for _, k in m], "--", color="#7f7f7f", label="score margin")
            ax.scatter([x["saved_share"]], [x["kept_share"]], marker="*", s=170, color="#d62728", zorder=5,
                       label=f"threshold {x['threshold']:.3g} from {r['split']}" +
                             ("" if x.get("in_proposal", True) else " (not in the proposal)"))
            ax.set_title(f"early exit of {stage} on {h['split']}")
        ax.plot([0, 1], [1, 0], ":", color="#999999", label="skipping at random")
        ax.axhline(r["exit_target"], color="#2ca02c", lw=0.8, ls="--", label=f"target {r['exit_target']:.0%}")
        ax.set_xlabel("share of pairs saved")
        ax.set_ylabel("share of the stage's nDCG@10 gain kept")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)
