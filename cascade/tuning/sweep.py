"""The sweep: every setting's nDCG@10 and cost per query, the choice rule, and each step's verdict by cross-validation.

The choice rule (:func:`select`): among the allowed settings, the cheapest
whose mean nDCG@10 is within ``tolerance`` of the best one's. A stage
*pays* when, at the settings cross-validation picks for it, its gain over
the step before it has a 95% paired bootstrap interval above zero, or the
cascade's final ranking with it beats the best final ranking without it
(an LTR score that helps only through the cross-encoder's ``combine``);
both are measured on held-out folds only (settings chosen on the other
folds), so picking the best of many settings does not inflate them. Stages are judged in
order: a stage that does not pay is off for every later decision, and off in
the proposal. The whole procedure is itself cross-validated (outer folds)
to estimate what the tuned profile scores on queries it was not tuned on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from cascade.fusion import fuse
from cascade.candidates import Hit
from cascade.tuning import chain
from cascade.tuning.data import Collected, QueryData
from cascade.tuning.space import Setting
from cascade.tuning.stats import CUTOFF, Interval, folds_by_query, paired_bootstrap


@dataclass
class Matrix:
    """Per setting and per query: final nDCG@10 and modelled cost in ms (the collected queries, in order)."""

    settings: list[Setting]
    ndcg: np.ndarray  # (settings, queries)
    ms: np.ndarray  # (settings, queries)

    def index(self, s: Setting) -> int:
        return self.settings.index(s)


def query_ms(col: Collected, qd: QueryData, setting: Setting, units: Sequence[int]) -> float:
    """A setting's cost for one query: measured retrieval and fusion, fitted features and stage costs."""
    ms = qd.retrieval_ms + qd.fusion_ms[setting.fusion]
    if col.reads_features and any(ss.enabled and sp.scored_by == "rows" for sp, ss in zip(col.specs, setting.stages)):
        ms += col.costs["features"].ms(len(qd.variants[setting.fusion]))
    for sp, n in zip(col.specs, units):
        ms += col.costs[sp.name].ms(n)
    return ms


def evaluate(col: Collected, settings: Sequence[Setting],
             on_progress: Callable[[int, int], None] | None = None) -> Matrix:
    """nDCG@10 and cost of every setting on every collected query (stage outputs shared through a memo)."""
    nd = np.zeros((len(settings), len(col.queries)))
    ms = np.zeros_like(nd)
    for j, qd in enumerate(col.queries):
        memo: dict = {}
        for i, s in enumerate(settings):
            out = chain.run(qd, s, col.specs, memo=memo)
            nd[i, j] = qd.judgments.ndcg(out.top)
            ms[i, j] = query_ms(col, qd, s, out.units)
        if on_progress:
            on_progress(j + 1, len(col.queries))
    return Matrix(list(settings), nd, ms)


def select(mat: Matrix, cols: Sequence[int] | np.ndarray, allowed: np.ndarray, tolerance: float) -> int:
    """The cheapest allowed setting whose mean nDCG@10 over ``cols`` is within ``tolerance`` of the best."""
    cols = np.asarray(cols, dtype=np.int64)
    q = mat.ndcg[:, cols].mean(axis=1)
    c = mat.ms[:, cols].mean(axis=1)
    q = np.where(allowed, q, -np.inf)
    best = q.max()
    if not np.isfinite(best):
        raise ValueError("no setting is allowed")
    ok = np.flatnonzero(q >= best - tolerance - 1e-12)
    return int(min(ok, key=lambda i: (round(c[i], 6), -q[i], i)))


class Steps:
    """Per-step nDCG@10 of a setting on a query (memoized): what marginal gains are computed from."""

    def __init__(self, col: Collected):
        self.col, self._memo = col, {}

    def __call__(self, s: Setting, j: int) -> chain.ChainOut:
        key = (s, tuple(ss.exit.model_dump_json() if ss.exit else None for ss in s.stages), j)
        got = self._memo.get(key)
        if got is None:
            got = self._memo[key] = chain.run(self.col.queries[j], s, self.col.specs, steps=True)
        return got

    def ndcg(self, s: Setting, j: int, step: int) -> float:
        """nDCG@10 after step ``step`` (0: fusion, i + 1: stage i)."""
        return self.col.queries[j].judgments.ndcg(self(s, j).steps[step].top)


@dataclass
class Verdict:
    """One step's marginal nDCG@10 over the step before it, with its interval, cost and whether it pays."""

    name: str
    kind: str
    gain: Interval
    compared_to: str
    ms_per_query: float
    units_per_query: float = 0.0
    unit: str | None = None
    calls_per_query: float = 0.0
    setting: str = ""
    note: str = ""
    ablation: Interval | None = None  # stages: the final ranking with it against the best one without it

    @property
    def pays(self) -> bool:
        """Its gain over the step before it, or its effect on the final ranking (a stage whose score only helps
        through a later stage's ``combine``), has a 95% interval above 0."""
        return self.gain.low > 0 or (self.ablation is not None and self.ablation.low > 0)

    def as_json(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "marginal_ndcg@10": round(self.gain.mean, 5),
             "ci_low": round(self.gain.low, 5), "ci_high": round(self.gain.high, 5), "queries": self.gain.n,
             "compared_to": self.compared_to, "ms_per_query": round(self.ms_per_query, 3), "pays": self.pays,
             "calls_per_query": round(self.calls_per_query, 3)}
        if self.unit:
            d[f"{self.unit}_per_query"] = round(self.units_per_query, 2)
        if self.ablation is not None:
            d.update({"final_with_minus_without": round(self.ablation.mean, 5),
                      "final_ci_low": round(self.ablation.low, 5), "final_ci_high": round(self.ablation.high, 5),
                      "pays_by": "marginal" if self.gain.low > 0 else "final ranking" if self.pays else None})
        if self.setting:
            d["setting"] = self.setting
        if self.note:
            d["note"] = self.note
        return d


def _enabled_mask(mat: Matrix, j: int, on: bool) -> np.ndarray:
    return np.array([s.stages[j].enabled == on for s in mat.settings])


def _prev_step(s: Setting, j: int) -> int:
    """Index (in a ChainOut's steps) of the step stage ``j`` follows in setting ``s``: the previous enabled stage,
    or fusion (0)."""
    for i in range(j - 1, -1, -1):
        if s.stages[i].enabled:
            return i + 1
    return 0


def _step_name(col: Collected, step: int) -> str:
    return "fusion" if step == 0 else col.specs[step - 1].name


def _retriever_ndcg(qd: QueryData, r: str) -> float:
    return qd.judgments.ndcg(qd.hits.get(r, [])[:CUTOFF])


def _fused_without(col: Collected, qd: QueryData, v: int, drop: str) -> list[str]:
    rest = {r: [Hit(d, s) for d, s in zip(qd.hits[r], qd.hit_scores[r])] for r in col.retrievers if r != drop}
    return fuse(rest, col.fusion_cfgs[v]).ids[:CUTOFF]


@dataclass
class Procedure:
    """What tuning decides on a set of queries: the chosen setting and each step's verdict."""

    setting: int
    verdicts: list[Verdict] = field(default_factory=list)  # retrievers, fusion, stages in order
    forced: dict[str, int] = field(default_factory=dict)  # stage -> the setting chosen with it on (its cost)


class Tuner:
    """Runs the choice rule and the verdicts over a :class:`Matrix` of one collection."""

    def __init__(self, col: Collected, mat: Matrix, *, tolerance: float = 0.005, folds: int = 5, seed: int = 13,
                 resamples: int = 10_000):
        self.col, self.mat, self.tol, self.k, self.seed, self.resamples = col, mat, tolerance, folds, seed, resamples
        self.steps = Steps(col)
        self.pos = {q: j for j, q in enumerate(col.qids)}
        # A stage whose model saw these queries (and could not be cross-fitted) is not tuned on them: its scores
        # flatter it, so any depth or weight chosen here would favour it. It is judged at its configured
        # setting only (on or off); "does not pay" stays a sound verdict, "pays" is no evidence.
        self.frozen = np.ones(len(mat.settings), dtype=bool)
        for j, sp in enumerate(col.specs):
            if sp.name in col.in_sample and sp.name not in col.cross_fit:
                self.frozen &= np.array([not s.stages[j].enabled or s.stages[j] == sp.current for s in mat.settings])

    def folds(self, cols: Sequence[int]) -> list[list[int]]:
        qids = [self.col.qids[j] for j in cols]
        return [[self.pos[q] for q in f] for f in folds_by_query(qids, self.k, self.seed)]

    def decide(self, cols: Sequence[int], *, with_retrievers: bool = False) -> Procedure:
        """Verdicts stage by stage (inner cross-validation over ``cols``), then the choice among what pays."""
        mat, col = self.mat, self.col
        allowed = self.frozen.copy()
        folds = self.folds(cols)
        proc = Procedure(-1)
        if with_retrievers:
            proc.verdicts += self._retriever_verdicts(cols, folds)
        for j, sp in enumerate(col.specs):
            on = allowed & _enabled_mask(mat, j, True)
            if not on.any():
                continue
            off = allowed & _enabled_mask(mat, j, False)
            diffs_a, diffs_b, against, units, ms, calls = [], [], Counter(), [], [], []
            final_on, final_off = [], []
            for f, held in enumerate(folds):
                train = [c for g, fl in enumerate(folds) if g != f for c in fl]
                i_on = select(mat, train, on, self.tol)
                s = mat.settings[i_on]
                prev = _prev_step(s, j)
                against[_step_name(col, prev)] += 1
                for c in held:
                    diffs_a.append(self.steps.ndcg(s, c, j + 1))
                    diffs_b.append(self.steps.ndcg(s, c, prev))
                if off.any():  # the cascade's final ranking with the stage against the best one without it
                    i_off = select(mat, train, off, self.tol)
                    final_on += [mat.ndcg[i_on, c] for c in held]
                    final_off += [mat.ndcg[i_off, c] for c in held]
            forced = select(mat, cols, on, self.tol)
            proc.forced[sp.name] = forced
            fs = mat.settings[forced]
            for c in cols:
                out = self.steps(fs, c)
                n = out.units[j]
                units.append(n)
                calls.append(1.0 if n else 0.0)
                ms.append(col.costs[sp.name].ms(n) + (col.costs["features"].ms(out.candidates)
                                                        if sp.scored_by == "rows" and col.reads_features else 0.0))
            gain = paired_bootstrap(diffs_a, diffs_b, resamples=self.resamples, seed=self.seed)
            v = Verdict(sp.name, sp.kind, gain, against.most_common(1)[0][0], float(np.mean(ms)), float(np.mean(units)),
                        sp.cost_unit, float(np.mean(calls)), fs.stages[j].describe())
            if final_on:
                v.ablation = paired_bootstrap(final_on, final_off, resamples=self.resamples, seed=self.seed)
            if sp.name in col.in_sample:
                v.note = (f"in-sample: {col.in_sample[sp.name]}; judged at its configured setting only (a "
                          f"'does not pay' is robust, a 'pays' is no evidence)")
            proc.verdicts.append(v)
            allowed &= _enabled_mask(mat, j, v.pays)
        proc.setting = select(mat, cols, allowed, self.tol)
        return proc

    def _retriever_verdicts(self, cols: Sequence[int], folds: list[list[int]]) -> list[Verdict]:
        """Each retriever's contribution to the fused list, and fusion's gain over the best single retriever,
        at the fusion each fold's choice uses (held-out queries only)."""
        col, mat = self.col, self.mat
        free = self.frozen
        per_fold = []
        for f, held in enumerate(folds):
            train = [c for g, fl in enumerate(folds) if g != f for c in fl]
            v = mat.settings[select(mat, train, free, self.tol)].fusion
            best_r = max(col.retrievers, key=lambda r: np.mean([_retriever_ndcg(col.queries[c], r) for c in train]))
            per_fold.append((held, v, best_r))
        out = []
        for r in col.retrievers:
            a, b = [], []
            for held, v, _ in per_fold:
                for c in held:
                    qd = col.queries[c]
                    a.append(qd.judgments.ndcg(qd.variants[v].ids[:CUTOFF]))
                    b.append(qd.judgments.ndcg(_fused_without(col, qd, v, r)) if len(col.retrievers) > 1 else 0.0)
            ms = float(np.mean([col.queries[c].retriever_ms.get(r, 0.0) for c in cols]))
            against = "fusion without it" if len(col.retrievers) > 1 else "nothing"
            out.append(Verdict(r, "retriever", paired_bootstrap(a, b, resamples=self.resamples, seed=self.seed),
                               against, ms, calls_per_query=1.0,
                               note="retrievers serve every profile of the index: one that does not pay is "
                                    "removed from `retrievers:` (an index change), not from a profile"))
        a, b, against = [], [], Counter()
        for held, v, best_r in per_fold:
            against[best_r] += 1
            for c in held:
                qd = col.queries[c]
                a.append(qd.judgments.ndcg(qd.variants[v].ids[:CUTOFF]))
                b.append(_retriever_ndcg(qd, best_r))
        ms = float(np.mean([col.queries[c].fusion_ms[per_fold[0][1]] for c in cols]))
        out.append(Verdict("fusion", "fusion", paired_bootstrap(a, b, resamples=self.resamples, seed=self.seed),
                           against.most_common(1)[0][0], ms, calls_per_query=1.0,
                           setting=col.variants[per_fold[0][1]].label(col.retrievers)))
        return out

    def current_steps(self, setting: Setting, cols: Sequence[int] | None = None) -> list[dict]:
        """Each step of ``setting`` (the profile as it is) with its gain over the step before it (no choice made,
        so no cross-validation needed): what the profile buys today."""
        col = self.col
        cols = list(range(len(col.queries))) if cols is None else list(cols)
        rows = []
        names = ["fusion"] + [sp.name for sp in col.specs]
        for step in range(len(names)):
            if step and not setting.stages[step - 1].enabled:
                continue
            prev = _prev_step(setting, step - 1) if step else None
            a = [self.steps.ndcg(setting, c, step) for c in cols]
            if prev is None:
                best = max(col.retrievers, key=lambda r: np.mean([_retriever_ndcg(col.queries[c], r) for c in cols]))
                b = [_retriever_ndcg(col.queries[c], best) for c in cols]
                against = best
            else:
                b = [self.steps.ndcg(setting, c, prev) for c in cols]
                against = names[prev]
            gain = paired_bootstrap(a, b, resamples=self.resamples, seed=self.seed)
            rows.append({"name": names[step], "ndcg@10": round(float(np.mean(a)), 5), "compared_to": against,
                         **{k: v for k, v in gain.as_dict().items() if k != "mean"},
                         "marginal_ndcg@10": round(gain.mean, 5)})
        return rows

    def cross_validate(self, current: int, on_progress: Callable[[int, int], None] | None = None) -> dict:
        """Outer folds: the whole procedure on the other folds, scored on the held-out one, against the profile
        as it is on the same queries (paired)."""
        col, mat = self.col, self.mat
        cols = list(range(len(col.queries)))
        folds = self.folds(cols)
        tuned, cur, t_ms, c_ms, chosen = [], [], [], [], []
        for f, held in enumerate(folds):
            train = [c for g, fl in enumerate(folds) if g != f for c in fl]
            proc = self.decide(train)
            s = proc.setting
            chosen.append(describe(col, mat.settings[s]))
            tuned += [mat.ndcg[s, c] for c in held]
            cur += [mat.ndcg[current, c] for c in held]
            t_ms += [mat.ms[s, c] for c in held]
            c_ms += [mat.ms[current, c] for c in held]
            if on_progress:
                on_progress(f + 1, len(folds))
        gain = paired_bootstrap(tuned, cur, resamples=self.resamples, seed=self.seed)
        return {"folds": len(folds), "tuned_ndcg@10": round(float(np.mean(tuned)), 5),
                "current_ndcg@10": round(float(np.mean(cur)), 5), "gain": gain.as_dict(),
                "tuned_ms_per_query": round(float(np.mean(t_ms)), 2),
                "current_ms_per_query": round(float(np.mean(c_ms)), 2), "chosen_per_fold": chosen}


def describe(col: Collected, s: Setting) -> str:
    """A setting in one line: the fusion variant, then each stage."""
    parts = [col.variants[s.fusion].label(col.retrievers)]
    parts += [f"{sp.name}: {ss.describe()}" for sp, ss in zip(col.specs, s.stages)]
    return "; ".join(parts)
