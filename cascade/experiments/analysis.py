"""An experiment's report from the consumer's aggregates: per-arm metrics, tests, the verdict, and pictures.

The same function answers ``GET /v1/experiments/{id}`` and ``cascade
experiments report``. Its inputs are the counters the event consumer keeps
(:mod:`connectors.events`) and their snapshots every few impressions; nothing
here reads raw events, so a report costs the same after a million impressions
as after ten.

Always-valid p-values are the running minimum over the snapshots (each
snapshot is a look) and the current counts; the verdict uses them, so a team
may open the report every hour. The fixed-horizon tests are shown beside them
for readers who planned one look at ``sample_size``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cascade.experiments import stats
from cascade.experiments.config import ExperimentConfig
from cascade.plots import save_figure

Counts = Mapping[str, float | int | str]


def _g(c: Counts, key: str) -> float:
    v = c.get(key, 0)
    return float(v) if isinstance(v, (int, float)) else 0.0


@dataclass
class ArmMetrics:
    arm: str
    served: int  # searches answered with this arm (ab) / lists it contributed to (interleaving: every one)
    clicks: int
    clicked_queries: int
    ctr: float  # share of impressions with at least one click
    clicks_per_query: float
    abandonment: float
    mrr: float  # mean reciprocal rank of the top click (0 for no click)
    clicks_at: dict[str, float] = field(default_factory=dict)  # share of impressions with a click at rank <= k
    impression_events: int = 0
    dwell_mean_s: float | None = None
    degraded: int = 0
    unattributed: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    team_clicks: int | None = None  # interleaving: clicks credited to this arm's picks
    first_picks: int | None = None  # interleaving: lists whose first document this arm placed


@dataclass
class PairResult:
    a: str
    b: str
    wins: int  # queries where a got more clicks than b
    losses: int
    ties: int
    delta: float  # (wins - losses) / (wins + losses + ties): > 0 means a is preferred
    delta_low: float  # percentile bootstrap over clicked queries
    delta_high: float
    p_fixed: float  # binomial sign test (one planned look)
    p_always_valid: float  # running minimum over looks of the mixture SPRT
    win_rate: float  # P(a wins | the query decided)
    win_rate_low: float  # always-valid confidence sequence
    win_rate_high: float
    significant: bool
    winner: str | None


@dataclass
class ABResult:
    metric: str
    control: str
    treatment: str
    control_mean: float
    treatment_mean: float
    difference: float  # treatment - control
    ci_low: float  # Welch (fixed horizon)
    ci_high: float
    cs_low: float  # always-valid confidence sequence
    cs_high: float
    p_fixed: float
    p_always_valid: float
    significant: bool
    winner: str | None


@dataclass
class ExperimentReport:
    id: str
    index: str
    mode: str
    status: str
    arms: list[str]
    alpha: float
    served: int
    sample_size: int | None
    progress: float | None
    arm_metrics: list[ArmMetrics]
    srm_p: float
    srm_flag: bool
    verdict: str
    winner: str | None
    ab: list[ABResult] = field(default_factory=list)  # ab: each treatment arm against the control
    pairs: list[PairResult] = field(default_factory=list)  # interleave: one; multileave: every pair
    clicked_queries: int = 0
    looks: int = 0
    series: list[dict[str, float]] = field(default_factory=list)  # for the plot: one point per look
    orphans: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""

    def as_json(self) -> dict[str, Any]:
        return _finite(asdict(self))

    # ------------------------------------------------------------------ tables

    def table(self) -> Any:
        """The terminal view: fits 80 columns, numbers never cut (arm names wrap)."""
        from rich.table import Table

        t = Table(title=f"experiment {self.id} ({self.mode}, index {self.index}): {self.status}, "
                        f"{self.served} impressions" + (f" of {self.sample_size}" if self.sample_size else ""),
                  caption=f"verdict: {self.verdict}", caption_justify="left")
        t.add_column("arm", overflow="fold", min_width=6)
        cols = ["served", "CTR", "clicks/q", "MRR", "abandon"]
        if self.mode != "ab":
            cols = ["team clicks", "first picks", "CTR", "clicks/q"]
        for c in cols:
            t.add_column(c, justify="right", no_wrap=True)
        for m in self.arm_metrics:
            if self.mode == "ab":
                t.add_row(m.arm, str(m.served), f"{m.ctr:.3f}", f"{m.clicks_per_query:.3f}", f"{m.mrr:.3f}",
                          f"{m.abandonment:.3f}")
            else:
                t.add_row(m.arm, str(m.team_clicks or 0), str(m.first_picks or 0), f"{m.ctr:.3f}",
                          f"{m.clicks_per_query:.3f}")
        return t

    def tests_table(self) -> Any:
        from rich.table import Table

        if self.mode == "ab":
            t = Table(title=f"A/B on {self.ab[0].metric if self.ab else 'clicks'} per impression "
                            f"(treatment - control)")
            t.add_column("arms", overflow="fold", min_width=8)
            for c in ("diff", "95% CI", "p fixed", "p any-time"):
                t.add_column(c, justify="right", no_wrap=True)
            for r in self.ab:
                t.add_row(f"{r.treatment} vs {r.control}", f"{r.difference:+.4f}",
                          f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]", _p(r.p_fixed), _p(r.p_always_valid))
            return t
        t = Table(title="interleaving: per-query wins / losses / ties (Δ > 0: first arm preferred)")
        t.add_column("pair", overflow="fold", min_width=8)
        for c in ("W/L/T", "Δ", "95% CI", "p fixed", "p any-time"):
            t.add_column(c, justify="right", no_wrap=True)
        for r in self.pairs:
            t.add_row(f"{r.a} vs {r.b}", f"{r.wins}/{r.losses}/{r.ties}", f"{r.delta:+.3f}",
                      f"[{r.delta_low:+.3f}, {r.delta_high:+.3f}]", _p(r.p_fixed), _p(r.p_always_valid))
        return t

    def markdown(self) -> str:
        lines = [f"Experiment `{self.id}` on index `{self.index}` ({self.mode}, arms {', '.join(self.arms)}): "
                 f"{self.status}, {self.served} impressions, {self.clicked_queries} with clicks. "
                 f"**Verdict: {self.verdict}.** Sample-ratio check p = {_p(self.srm_p)}"
                 f"{' (MISMATCH)' if self.srm_flag else ''}.", ""]
        if self.mode == "ab":
            lines += ["| arm | served | CTR | clicks/query | MRR | abandonment |", "|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {m.arm} | {m.served} | {m.ctr:.4f} | {m.clicks_per_query:.4f} | {m.mrr:.4f} | "
                      f"{m.abandonment:.4f} |" for m in self.arm_metrics]
            lines += ["", "| treatment vs control | metric | difference | 95% CI (Welch) | always-valid CS | "
                          "p (fixed) | p (always valid) |", "|---|---|---:|---|---|---:|---:|"]
            lines += [f"| {r.treatment} vs {r.control} | {r.metric} | {r.difference:+.4f} | "
                      f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] | [{r.cs_low:+.4f}, {r.cs_high:+.4f}] | "
                      f"{_p(r.p_fixed)} | {_p(r.p_always_valid)} |" for r in self.ab]
        else:
            lines += ["| pair | wins | losses | ties | Δ | 95% CI (bootstrap) | p (sign test) | p (always valid) |",
                      "|---|---:|---:|---:|---:|---|---:|---:|"]
            lines += [f"| {r.a} vs {r.b} | {r.wins} | {r.losses} | {r.ties} | {r.delta:+.4f} | "
                      f"[{r.delta_low:+.4f}, {r.delta_high:+.4f}] | {_p(r.p_fixed)} | {_p(r.p_always_valid)} |"
                      for r in self.pairs]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ pictures

    def plot(self, path: Path) -> Path:
        """Interleaving: cumulative preference with its always-valid band over impressions (multileave: the
        pairwise preference matrix beside it). A/B: the difference of the metric with its band."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        multi = self.mode == "multileave"
        fig, axes = plt.subplots(1, 2 if multi else 1, figsize=(11 if multi else 7, 4.2))
        ax = axes[0] if multi else axes
        xs = [p["served"] for p in self.series]
        if self.mode == "ab":
            for r in self.ab:
                ys = [p.get(f"diff:{r.treatment}", math.nan) for p in self.series]
                lo = [p.get(f"cs_low:{r.treatment}", math.nan) for p in self.series]
                hi = [p.get(f"cs_high:{r.treatment}", math.nan) for p in self.series]
                ax.plot(xs, ys, label=f"{r.treatment} - {r.control}")
                ax.fill_between(xs, lo, hi, alpha=0.2)
            ax.set_ylabel(f"difference in {self.ab[0].metric if self.ab else 'clicks'} per impression")
        else:
            for r in self.pairs:
                key = f"{r.a}|{r.b}"
                ys = [p.get(f"pref:{key}", math.nan) for p in self.series]
                lo = [p.get(f"pref_low:{key}", math.nan) for p in self.series]
                hi = [p.get(f"pref_high:{key}", math.nan) for p in self.series]
                ax.plot(xs, ys, label=f"{r.a} over {r.b}")
                ax.fill_between(xs, lo, hi, alpha=0.15)
            ax.set_ylabel("preference: P(win) - P(loss) among decided queries")
            ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("impressions")
        ax.set_title(f"{self.id}: {self.verdict}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        if multi:
            import numpy as np

            n = len(self.arms)
            m = np.zeros((n, n))
            for r in self.pairs:
                i, j = self.arms.index(r.a), self.arms.index(r.b)
                m[i, j], m[j, i] = r.delta, -r.delta
            im = axes[1].imshow(m, cmap="RdBu", vmin=-max(0.05, abs(m).max()), vmax=max(0.05, abs(m).max()))
            axes[1].set_xticks(range(n), self.arms, rotation=30, fontsize=8)
            axes[1].set_yticks(range(n), self.arms, fontsize=8)
            for r in self.pairs:
                i, j = self.arms.index(r.a), self.arms.index(r.b)
                mark = "*" if r.significant else ""
                axes[1].text(j, i, f"{r.delta:+.2f}{mark}", ha="center", va="center", fontsize=8)
                axes[1].text(i, j, f"{-r.delta:+.2f}{mark}", ha="center", va="center", fontsize=8)
            axes[1].set_title("row arm preferred over column arm (Δ; * always-valid p < alpha)", fontsize=8)
            fig.colorbar(im, ax=axes[1], fraction=0.046)
        return save_figure(fig, path, dpi=120)


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


# ---------------------------------------------------------------- from counts


def _arm_metrics(c: Counts, cfg: ExperimentConfig) -> list[ArmMetrics]:
    out = []
    for t, arm in enumerate(cfg.arms):
        sfx = f":{arm}" if cfg.mode == "ab" else ""
        served = int(_g(c, f"served{sfx}"))
        clicks, clicked = int(_g(c, f"clicks{sfx}")), int(_g(c, f"clicked{sfx}"))
        n = max(served, 1)
        dwell_n = _g(c, f"dwell_n{sfx}")
        actions = {}
        for k in c:
            if k.startswith("action:") and (k.endswith(sfx) if sfx else True):
                name = k[len("action:"):-len(sfx)] if sfx else k[len("action:"):]
                if not sfx or ":" not in name:
                    actions[name] = int(_g(c, k))
        m = ArmMetrics(
            arm=arm, served=served, clicks=clicks, clicked_queries=clicked, ctr=clicked / n,
            clicks_per_query=clicks / n, abandonment=1 - clicked / n if served else 0.0, mrr=_g(c, f"rr{sfx}") / n,
            clicks_at={f"@{k}": _g(c, f"c@{k}{sfx}") / n for k in (1, 3, 5, 10)} if cfg.mode == "ab" else {},
            impression_events=int(_g(c, f"impressions{sfx}")),
            dwell_mean_s=_g(c, f"dwell{sfx}") / dwell_n if dwell_n else None,
            degraded=int(_g(c, f"degraded{sfx}")), unattributed=int(_g(c, f"unattributed{sfx}")), actions=actions)
        if cfg.mode != "ab":
            m.team_clicks, m.first_picks = int(_g(c, f"teamclicks:{t}")), int(_g(c, f"first:{t}"))
        out.append(m)
    return out


def moments(c: Counts, arm: str, metric: str) -> stats.Moments:
    """One arm's per-impression outcome sums: clicks (count, Σx, Σx²), ctr (clicked or not) or mrr."""
    n = int(_g(c, f"served:{arm}"))
    if metric == "ctr":
        k = _g(c, f"clicked:{arm}")
        return stats.Moments(n, k, k)
    if metric == "mrr":
        return stats.Moments(n, _g(c, f"rr:{arm}"), _g(c, f"rr2:{arm}"))
    return stats.Moments(n, _g(c, f"clicks:{arm}"), _g(c, f"clicks2:{arm}"))


def _pair_counts(c: Counts, i: int, j: int) -> tuple[int, int, int]:
    lo, hi = min(i, j), max(i, j)
    return int(_g(c, f"w:{i}:{j}")), int(_g(c, f"w:{j}:{i}")), int(_g(c, f"t:{lo}:{hi}"))


def _look(c: Counts, cfg: ExperimentConfig) -> dict[str, float]:
    """What one look (a snapshot, or now) shows: per pair (or treatment) the preference, its band and p."""
    pt: dict[str, float] = {"served": _g(c, "served")}
    if cfg.mode == "ab":
        ctl = moments(c, cfg.arms[0], cfg.metric)
        for arm in cfg.arms[1:]:
            tr = moments(c, arm, cfg.metric)
            lo, hi = stats.msprt_confidence_sequence(ctl, tr, cfg.alpha)
            pt[f"diff:{arm}"] = tr.mean - ctl.mean
            pt[f"cs_low:{arm}"], pt[f"cs_high:{arm}"] = lo, hi
            pt[f"p:{arm}"] = stats.msprt_p(ctl, tr)
        return pt
    for i in range(len(cfg.arms)):
        for j in range(i + 1, len(cfg.arms)):
            w, l, _ = _pair_counts(c, i, j)
            key = f"{cfg.arms[i]}|{cfg.arms[j]}"
            lo, hi = stats.sign_confidence_sequence(w, l, cfg.alpha)
            pt[f"pref:{key}"] = (w - l) / (w + l) if w + l else 0.0
            pt[f"pref_low:{key}"], pt[f"pref_high:{key}"] = 2 * lo - 1, 2 * hi - 1
            pt[f"p:{key}"] = stats.sign_p_always_valid(w, l)
    return pt


def report(cfg: ExperimentConfig, eid: str, index: str, counts: Counts, snapshots: Sequence[Counts] = (),
           orphans: Mapping[str, int] | None = None, status: str | None = None) -> ExperimentReport:
    """The experiment's state from its aggregate ``counts`` and earlier ``snapshots`` (looks), oldest first."""
    looks = [*(s for s in snapshots if _g(s, "served") <= _g(counts, "served")), counts]
    series = [_look(s, cfg) for s in looks]
    served = int(_g(counts, "served"))
    arms = _arm_metrics(counts, cfg)
    if cfg.mode == "ab":
        observed = [m.served for m in arms]
        expected = cfg.arm_shares()
    else:  # which team places the first document is a fair coin per list: the interleaving's own SRM check
        observed = [m.first_picks or 0 for m in arms]
        expected = [1 / len(arms)] * len(arms)
    srm_p = stats.srm(observed, expected)
    rep = ExperimentReport(
        id=eid, index=index, mode=cfg.mode, status=status or cfg.status(), arms=list(cfg.arms), alpha=cfg.alpha,
        served=served, sample_size=cfg.sample_size,
        progress=min(1.0, served / cfg.sample_size) if cfg.sample_size else None, arm_metrics=arms,
        srm_p=srm_p, srm_flag=srm_p < stats.SRM_ALPHA, verdict="", winner=None,
        clicked_queries=int(_g(counts, "clicked")) if cfg.mode != "ab" else sum(m.clicked_queries for m in arms),
        looks=len(looks), series=series, orphans=dict(orphans or {}), fingerprint=cfg.fingerprint())
    if cfg.mode == "ab":
        ctl = moments(counts, cfg.arms[0], cfg.metric)
        for arm in cfg.arms[1:]:
            tr = moments(counts, arm, cfg.metric)
            d, lo, hi, p_fixed = stats.welch(ctl, tr, cfg.alpha)
            cs_lo, cs_hi = stats.msprt_confidence_sequence(ctl, tr, cfg.alpha)
            p_av = min(pt[f"p:{arm}"] for pt in series)
            sig = p_av < cfg.alpha
            rep.ab.append(ABResult(cfg.metric, cfg.arms[0], arm, ctl.mean, tr.mean, d, lo, hi, cs_lo, cs_hi, p_fixed,
                                   p_av, sig, (arm if d > 0 else cfg.arms[0]) if sig else None))
    else:
        for i in range(len(cfg.arms)):
            for j in range(i + 1, len(cfg.arms)):
                w, l, t = _pair_counts(counts, i, j)
                delta, dlo, dhi = stats.delta_bootstrap(w, l, t, alpha=cfg.alpha)
                lo, hi = stats.sign_confidence_sequence(w, l, cfg.alpha)
                p_av = min(pt[f"p:{cfg.arms[i]}|{cfg.arms[j]}"] for pt in series)
                sig = p_av < cfg.alpha
                winner = (cfg.arms[i] if w > l else cfg.arms[j]) if sig else None
                rep.pairs.append(PairResult(cfg.arms[i], cfg.arms[j], w, l, t, delta, dlo, dhi, stats.sign_p_fixed(w, l),
                                            p_av, w / (w + l) if w + l else 0.5, lo, hi, sig, winner))
    rep.verdict, rep.winner = _verdict(rep, cfg)
    return rep


def _verdict(rep: ExperimentReport, cfg: ExperimentConfig) -> tuple[str, str | None]:
    if rep.srm_flag:
        return (f"do not trust: the split between arms is off (sample-ratio mismatch, p = {_p(rep.srm_p)}); "
                f"check assignment and logging"), None
    if rep.served == 0:
        return "no impressions yet", None
    results = rep.ab if cfg.mode == "ab" else rep.pairs
    wins = [r.winner for r in results if r.winner]
    if cfg.mode == "multileave":
        if wins:
            beaten = {a: sum(1 for r in rep.pairs if r.winner == a) for a in cfg.arms}
            best = max(beaten, key=lambda a: beaten[a])
            top = best if beaten[best] == len(cfg.arms) - 1 else None
            n_sig = sum(1 for r in rep.pairs if r.significant)
            lead = f"{best} beats all others" if top else f"{best} leads"
            return f"{lead} ({n_sig} of {len(rep.pairs)} pairs significant)", top
    elif wins:
        w = wins[0]
        if cfg.mode == "ab":
            r = next(r for r in rep.ab if r.winner == w)
            return f"{w} wins on {r.metric} ({r.difference:+.4f} per impression, always-valid p = {_p(r.p_always_valid)})", w
        r = rep.pairs[0]
        return f"{w} wins (Δ = {r.delta:+.3f}, always-valid p = {_p(r.p_always_valid)})", w
    if cfg.sample_size and rep.served >= cfg.sample_size:
        return f"no significant difference after the planned {cfg.sample_size} impressions", None
    more = f" ({rep.served} of {cfg.sample_size} impressions)" if cfg.sample_size else ""
    return f"not significant yet: keep collecting{more}", None
