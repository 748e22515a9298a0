"""``cascade tune`` end to end: collect, sweep, judge each step, cross-validate, pick, add early exits, propose.

The tuning split is the only data any choice reads. A held-out split
(``holdout``), when given, is collected the same way afterwards and only
evaluated: the current profile, the proposal, and the best setting of the
same grid found by brute force on the held-out queries themselves (an
oracle no choice could reach, the reference the proposal is judged against).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from cascade.controller import Cascade
from cascade.stages.base import GATE_FEATURES
from cascade.tuning.collect import collect
from cascade.tuning.data import Collected
from cascade.tuning.gate import ExitChoice, curve, exit_data, gate_probability, shares, tune_exit
from cascade.tuning.proposal import diff, profile_edit, with_profile
from cascade.tuning.space import FusionVariant, Setting, Space, current_setting, grid
from cascade.tuning.stats import Interval, paired_bootstrap, pareto_front
from cascade.tuning.sweep import Matrix, Procedure, Steps, Tuner, describe, evaluate, query_ms

Progress = Callable[[str, int, int], None]


@dataclass
class Point:
    """A setting's mean quality and cost on a set of queries."""

    label: str
    ndcg: float
    ms: float
    setting: str = ""
    units: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"label": self.label, "ndcg@10": round(self.ndcg, 5), "ms_per_query": round(self.ms, 2),
                "setting": self.setting, **({"units_per_query": {k: round(v, 2) for k, v in self.units.items()}}
                                            if self.units else {})}


@dataclass
class Holdout:
    """The held-out split: current, proposed and brute-force best, with paired intervals."""

    split: str
    queries: int
    current: Point
    proposed: Point
    proposed_no_exit: Point
    best: Point
    vs_best: Interval
    vs_current: Interval
    exit: dict[str, Any] = field(default_factory=dict)  # per stage: kept/saved on held-out, and the curve
    front: list[tuple[float, float]] = field(default_factory=list)
    cloud: list[tuple[float, float]] = field(default_factory=list)

    @property
    def within_noise(self) -> bool:
        return self.vs_best.high >= 0

    def as_json(self) -> dict:
        return {"split": self.split, "queries": self.queries, "current": self.current.as_json(),
                "proposed": self.proposed.as_json(), "proposed_without_early_exit": self.proposed_no_exit.as_json(),
                "best_on_holdout": self.best.as_json(), "proposed_minus_best": self.vs_best.as_dict(),
                "proposed_minus_current": self.vs_current.as_dict(), "within_noise_of_best": self.within_noise,
                "cost_ratio_proposed_to_current": round(self.proposed.ms / self.current.ms, 4) if self.current.ms else None,
                "early_exit": self.exit,
                "cloud": [[round(x, 2), round(y, 5)] for x, y in self.cloud],
                "front": [[round(x, 2), round(y, 5)] for x, y in self.front]}


@dataclass
class TuneResult:
    dataset: str
    split: str
    index: str
    profile: str
    name: str
    col: Collected
    mat: Matrix
    current: int
    chosen: int
    setting: Setting  # the chosen setting with early exits
    verdicts: list
    current_steps: list[dict]
    cv: dict
    exits: list[ExitChoice]
    front: list[int]
    edit: dict
    config: Any
    diff: str
    tolerance: float
    target: float
    folds: int
    seconds: float
    tuned_point: Point
    current_point: Point
    holdout: Holdout | None = None
    holdout_col: Collected | None = None
    holdout_mat: Matrix | None = None

    def curves(self) -> dict:
        """What ``cascade plan`` reads: recall@k per retriever and quality per pair-stage depth (the tuning split,
        and the held-out split when there is one: a stage flattered by its training data reads truer there)."""
        out: dict[str, Any] = {"recall": {r: {str(k): round(v, 4) for k, v in c.items()}
                                          for r, c in self.col.recall.items()},
                               "depth": depth_curves(self.col, self.mat, self.mat.settings[self.chosen])}
        if self.holdout is not None and self.holdout_mat is not None:
            out["depth_holdout"] = depth_curves(self.holdout_col, self.holdout_mat, self.mat.settings[self.chosen])
            out["holdout_split"] = self.holdout.split
        return out

    def costs(self) -> dict:
        col = self.col
        return {"retrieval_ms": round(float(np.mean([q.retrieval_ms for q in col.queries])), 3),
                "retriever_ms": {r: round(float(np.mean([q.retriever_ms.get(r, 0.0) for q in col.queries])), 3)
                                 for r in col.retrievers},
                "retriever_ms_samples": {r: [round(x, 3) for x in v] for r, v in col.retriever_samples.items()} or
                                        {r: [round(q.retriever_ms.get(r, 0.0), 3) for q in col.queries]
                                         for r in col.retrievers},
                "calibration": {**col.calibration, "how": "core-milliseconds: each call repeated, the least of its "
                                "wall and process CPU time kept (the machine is shared), then fixed + per-unit ms "
                                "fitted by non-negative least squares"},
                "embed_ms": None if col.embed_ms is None else round(col.embed_ms, 3),
                "fusion_ms": round(float(np.mean([q.fusion_ms[0] for q in col.queries])), 4),
                "corpus_docs": col.corpus_docs,
                "fused_candidates": [len(q.variants[self.setting.fusion]) for q in col.queries],
                "units": {k: v.as_dict() for k, v in col.costs.items()},
                "units_during_collection": {k: v.as_dict() for k, v in col.loaded_costs.items()},
                "pairs_per_query": self.tuned_point.units}

    def as_json(self) -> dict:
        col = self.col
        return {
            "dataset": self.dataset, "split": self.split, "index": self.index, "profile": self.profile,
            "queries": len(col.queries), "skipped_queries": col.skipped, "failed_queries": col.failed,
            "mode": "tuning split" if self.holdout is not None or self.split != "test" else
                    f"{self.folds}-fold cross-validation by query (no training split)",
            "tolerance": self.tolerance, "exit_target": self.target, "folds": self.folds,
            "seconds": round(self.seconds, 1),
            "stages": [v.as_json() for v in self.verdicts],
            "current_profile_steps": self.current_steps,
            "cross_validation": self.cv,
            "current": self.current_point.as_json(), "tuned": self.tuned_point.as_json(),
            "chosen_without_early_exit": {"ndcg@10": round(float(self.mat.ndcg[self.chosen].mean()), 5),
                                          "ms_per_query": round(float(self.mat.ms[self.chosen].mean()), 2)},
            "cloud": [[round(float(self.mat.ms[i].mean()), 2), round(float(self.mat.ndcg[i].mean()), 5)]
                      for i in range(len(self.mat.settings))],
            "proposal": {"name": self.name, "profile": self.edit,
                         "resolved": self.config.profile(self.name).model_dump(mode="json", exclude_defaults=True)},
            "diff": self.diff,
            "early_exit": [e.as_json() for e in self.exits],
            "pareto_front": [{"ndcg@10": round(float(self.mat.ndcg[i].mean()), 5),
                              "ms_per_query": round(float(self.mat.ms[i].mean()), 2),
                              "setting": describe(col, self.mat.settings[i])} for i in self.front],
            "settings_swept": len(self.mat.settings), "fusion_variants": len(col.variants),
            "notes": col.notes + [f"{k}: in-sample: {v}" for k, v in col.in_sample.items()],
            "costs": self.costs(), "curves": self.curves(),
            "holdout": self.holdout.as_json() if self.holdout else None,
        }


def depth_curves(col: Collected, mat: Matrix, chosen: Setting) -> dict[str, list[dict]]:
    """nDCG@10 and cost against each pair stage's depth, everything else as in ``chosen`` (depth 0: off)."""
    depth: dict[str, list] = {}
    for j, sp in enumerate(col.specs):
        if sp.scored_by != "pairs":
            continue
        rows = []
        for d in (0, *col.space.depths):
            cand = [i for i, s in enumerate(mat.settings) if s.fusion == chosen.fusion
                    and all(a == b for k, (a, b) in enumerate(zip(s.stages, chosen.stages)) if k != j)
                    and (s.stages[j].enabled and s.stages[j].rerank == d if d else not s.stages[j].enabled)
                    and (not d or s.stages[j].combine == chosen.stages[j].combine)]
            if cand:
                i = cand[0]
                rows.append({"depth": d, "ndcg@10": round(float(mat.ndcg[i].mean()), 5),
                             "ms_per_query": round(float(mat.ms[i].mean()), 2)})
        depth[sp.name] = rows
    return depth


def _point(col: Collected, steps: Steps, s: Setting, label: str, cols: Sequence[int] | None = None) -> Point:
    cols = range(len(col.queries)) if cols is None else cols
    nd, ms, units = [], [], {sp.name: [] for sp in col.specs}
    for c in cols:
        out = steps(s, c)
        qd = col.queries[c]
        nd.append(qd.judgments.ndcg(out.top))
        ms.append(query_ms(col, qd, s, out.units))
        for sp, n in zip(col.specs, out.units):
            units[sp.name].append(n)
    return Point(label, float(np.mean(nd)), float(np.mean(ms)), describe(col, s),
                 {k: float(np.mean(v)) for k, v in units.items()})


def _with_exits(s: Setting, exits: dict[int, Any]) -> Setting:
    """``s`` with the tuned early exits (stages without one run for every query)."""
    return Setting(s.fusion, tuple(dataclasses.replace(ss, exit=exits.get(j)) for j, ss in enumerate(s.stages)))


async def tune(casc: Cascade, queries: dict[str, str], qrels: dict[str, dict[str, int]], *, dataset: str, split: str,
               variants: Sequence[FusionVariant], space: Space, name: str = "tuned",
               tolerance: float = 0.005, target: float = 0.9, folds: int = 5, seed: int = 13,
               limit: int | None = None, holdout: tuple[str, dict[str, dict[str, int]]] | None = None,
               resamples: int = 10_000, scores: Any = None, on_progress: Progress | None = None) -> TuneResult:
    t0 = time.perf_counter()
    progress = on_progress or (lambda phase, d, t: None)
    col = await collect(casc, queries, qrels, dataset=dataset, split=split, variants=variants, space=space,
                        limit=limit, cross_fit_folds=folds, seed=seed, score_cache=scores, on_progress=progress)
    settings = grid(col.variants, col.specs, col.space)
    cur = current_setting(col.specs)
    cur_plain = Setting(cur.fusion, tuple(dataclasses.replace(ss, exit=None) for ss in cur.stages))
    if cur_plain not in settings:
        settings.insert(0, cur_plain)
    mat = evaluate(col, settings, on_progress=lambda d, t: progress("sweeping settings", d, t))
    tuner = Tuner(col, mat, tolerance=tolerance, folds=folds, seed=seed, resamples=resamples)
    current = mat.index(cur_plain)
    all_cols = list(range(len(col.queries)))
    progress("verdicts", 0, 1)
    proc: Procedure = tuner.decide(all_cols, with_retrievers=True)
    progress("verdicts", 1, 1)
    current_steps = tuner.current_steps(cur)
    cv = tuner.cross_validate(current, on_progress=lambda d, t: progress("cross-validating the procedure", d, t))
    chosen = mat.settings[proc.setting]
    exits: list[ExitChoice] = []
    exit_cfgs: dict[int, Any] = {}
    pays = {v.name: v.pays for v in proc.verdicts}
    for j, sp in enumerate(col.specs):
        if sp.scored_by == "pairs" and chosen.stages[j].enabled and pays.get(sp.name):
            data = exit_data(tuner.steps, chosen, j, all_cols)
            choice = tune_exit(data, tuner.folds(all_cols), sp.name, target)
            exits.append(choice)
            if choice.config is not None:
                exit_cfgs[j] = choice.config
    setting = _with_exits(chosen, exit_cfgs)
    front = pareto_front([(float(mat.ms[i].mean()), float(mat.ndcg[i].mean())) for i in range(len(settings))])
    edit = profile_edit(casc.config, casc.profile, col.specs, col.variants[setting.fusion].config, setting,
                        f"Chosen by `cascade tune` on {dataset} {split} ({len(col.queries)} queries): the cheapest "
                        f"setting within {tolerance:g} nDCG@10 of the best, stages that do not pay disabled")
    config = with_profile(casc.config, name, edit, f"{casc.config.index}.yaml (with profile {name})")
    res = TuneResult(dataset, split, casc.config.index, casc.profile, name, col, mat, current, proc.setting, setting,
                     proc.verdicts, current_steps, cv, exits, front, edit, config, diff(config, casc.profile, name),
                     tolerance, target, folds, 0.0, _point(col, tuner.steps, setting, "proposed"),
                     _point(col, tuner.steps, cur, "current"))
    if holdout is not None:
        h_split, h_qrels = holdout
        hcol = await collect(casc, queries, h_qrels, dataset=dataset, split=h_split, variants=col.variants,
                             space=col.space, seed=seed, cross_fit=False, score_cache=scores,
                             on_progress=lambda ph, d, t: progress(f"holdout {h_split}: {ph}", d, t))
        hmat = evaluate(hcol, settings, on_progress=lambda d, t: progress(f"holdout {h_split}: sweeping", d, t))
        res.holdout = _holdout(hcol, hmat, h_split, cur, setting, chosen, exits, resamples, seed)
        res.holdout_col, res.holdout_mat = hcol, hmat
    res.seconds = time.perf_counter() - t0
    return res


def _holdout(col: Collected, mat: Matrix, split: str, cur: Setting, setting: Setting, chosen: Setting,
             exits: list[ExitChoice], resamples: int, seed: int) -> Holdout:
    steps = Steps(col)
    cols = list(range(len(col.queries)))
    best_i = int(np.argmax(mat.ndcg.mean(axis=1)))
    best = mat.settings[best_i]

    def per_query(s: Setting) -> list[float]:
        return [col.queries[c].judgments.ndcg(steps(s, c).top) for c in cols]

    p, b, c = per_query(setting), list(mat.ndcg[best_i]), per_query(cur)
    h = Holdout(split, len(cols), _point(col, steps, cur, "current"), _point(col, steps, setting, "proposed"),
                _point(col, steps, chosen, "proposed without early exit"), _point(col, steps, best, "best on holdout"),
                paired_bootstrap(p, b, resamples=resamples, seed=seed),
                paired_bootstrap(p, c, resamples=resamples, seed=seed))
    front = pareto_front([(float(mat.ms[i].mean()), float(mat.ndcg[i].mean())) for i in range(len(mat.settings))])
    h.front = [(float(mat.ms[i].mean()), float(mat.ndcg[i].mean())) for i in front]
    h.cloud = [(float(mat.ms[i].mean()), float(mat.ndcg[i].mean())) for i in range(len(mat.settings))]
    for e in exits:
        cfg = e.config or e.fitted
        if cfg is None:
            continue
        j = next(k for k, sp in enumerate(col.specs) if sp.name == e.stage)
        data = exit_data(steps, chosen, j, cols)
        if cfg.signal == "margin":
            sig = data.feats[:, GATE_FEATURES.index("margin12")]
        else:
            w = np.array([cfg.weights.get(k, 0.0) for k in GATE_FEATURES])
            sig = gate_probability(data.feats, w, cfg.bias)
        skip = np.isfinite(sig) & (sig >= cfg.threshold)
        kept, saved = shares(skip, data)
        margin = data.feats[:, GATE_FEATURES.index("margin12")]
        h.exit[e.stage] = {"signal": cfg.signal, "threshold": cfg.threshold, "in_proposal": e.config is not None,
                           "kept_share": round(kept, 4), "saved_share": round(saved, 4),
                           "exited_share": round(float(skip.mean()), 4),
                           "gain_without_exit": round(float(data.delta.mean()), 5),
                           "curve": [(round(a, 4), round(k, 4)) for a, k in curve(sig, data)],
                           "margin_curve": [(round(a, 4), round(k, 4)) for a, k in curve(margin, data)]}
    return h
