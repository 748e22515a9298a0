"""Per-query early exit: when to skip a stage because the step before it is already confident.

For one stage of a chosen setting, each training query gives the stage's
gain on it (nDCG@10 after the stage minus before), the pairs it scored and
the signal features of its incoming scores (:func:`cascade.stages.base.exit_features`,
the very function the controller calls). Two signals are tried: the score
margin between the first two incoming candidates, and a small logistic gate
on all four features predicting "the stage does not improve this query".
A threshold skips the queries whose signal reaches it; it is chosen as the
one saving the most pairs while the queries still run keep at least
``target`` of the stage's total gain. Both signals are cross-validated by
query (fit and threshold on the other folds, applied to the held-out one)
and the one saving more pairs out of fold while keeping the target wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from cascade.stages.base import GATE_FEATURES, EarlyExit
from cascade.tuning.space import Setting


@dataclass
class ExitData:
    """Per query: the stage's gain, the units it scored, and its signal features (NaN: too few to judge)."""

    delta: np.ndarray
    units: np.ndarray
    feats: np.ndarray  # (queries, len(GATE_FEATURES))

    def take(self, idx: Sequence[int]) -> "ExitData":
        idx = np.asarray(idx, dtype=np.int64)
        return ExitData(self.delta[idx], self.units[idx], self.feats[idx])


def exit_data(steps, setting: Setting, j: int, cols: Sequence[int]) -> ExitData:
    """What the gate learns from: stage ``j`` of ``setting`` on the queries ``cols`` (no exit applied)."""
    from cascade.tuning.sweep import _prev_step

    prev = _prev_step(setting, j)
    d, u, f = [], [], []
    for c in cols:
        out = steps(setting, c)
        qd = steps.col.queries[c]
        d.append(qd.judgments.ndcg(out.steps[j + 1].top) - qd.judgments.ndcg(out.steps[prev].top))
        u.append(out.units[j])
        sig = out.steps[j + 1].signal
        f.append([sig[k] for k in GATE_FEATURES] if sig else [np.nan] * len(GATE_FEATURES))
    return ExitData(np.array(d), np.array(u, dtype=np.float64), np.array(f, dtype=np.float64))


def shares(skip: np.ndarray, data: ExitData) -> tuple[float, float]:
    """(share of the stage's total gain kept, share of its units saved) when the queries in ``skip`` exit."""
    total, units = data.delta.sum(), data.units.sum()
    kept = float(data.delta[~skip].sum() / total) if total > 0 else float("nan")
    saved = float(data.units[skip].sum() / units) if units > 0 else 0.0
    return kept, saved


def choose_threshold(signal: np.ndarray, data: ExitData, target: float) -> float:
    """The threshold saving the most units with at least ``target`` of the gain kept (inf: never exit).

    Candidates are midpoints between consecutive observed signal values, so a
    threshold never sits exactly on a training query.
    """
    ok = np.isfinite(signal)
    vals = np.unique(signal[ok])
    best_t, best_saved = float("inf"), 0.0
    if data.delta.sum() <= 0 or len(vals) < 2:
        return best_t
    for t in (vals[1:] + vals[:-1]) / 2:
        skip = ok & (signal >= t)
        kept, saved = shares(skip, data)
        if kept >= target and saved > best_saved:
            best_t, best_saved = float(t), saved
    return best_t


def fit_gate(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, float] | None:
    """Logistic regression of ``y`` on ``x`` (L2 on standardized features), as weights and bias on the raw ones."""
    from scipy.optimize import minimize

    ok = np.isfinite(x).all(axis=1)
    x, y = x[ok], y[ok].astype(np.float64)
    if len(y) < 10 or y.min() == y.max():
        return None
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x - mu) / sd
    n = len(y)

    def loss(wb):
        w, b = wb[:-1], wb[-1]
        t = z @ w + b
        p = 1.0 / (1.0 + np.exp(-t))
        nll = np.sum(np.logaddexp(0.0, t) - y * t) / n + 0.5 * l2 * (w @ w) / n
        g = p - y
        return nll, np.concatenate([(z.T @ g + l2 * w) / n, [g.sum() / n]])

    res = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B")
    w_std, b_std = res.x[:-1], res.x[-1]
    w = w_std / sd
    return w, float(b_std - (w_std * mu / sd).sum())


def gate_probability(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    t = x @ w + b
    return np.where(np.isfinite(t), 1.0 / (1.0 + np.exp(-np.where(np.isfinite(t), t, 0.0))), np.nan)


def _signal(kind: str, data: ExitData, fitted: tuple[np.ndarray, float] | None) -> np.ndarray:
    if kind == "margin":
        return data.feats[:, GATE_FEATURES.index("margin12")]
    if fitted is None:
        return np.full(len(data.delta), np.nan)
    return gate_probability(data.feats, *fitted)


def _fit(kind: str, data: ExitData, target: float) -> tuple[tuple[np.ndarray, float] | None, float]:
    fitted = fit_gate(data.feats, (data.delta <= 0).astype(float)) if kind == "gate" else None
    if kind == "gate" and fitted is None:
        return None, float("inf")
    return fitted, choose_threshold(_signal(kind, data, fitted), data, target)


@dataclass
class ExitChoice:
    """The early exit chosen for one stage, with out-of-fold evidence for each signal tried."""

    stage: str
    target: float
    config: EarlyExit | None  # written into the proposal (None: no signal met the target out of fold)
    out_of_fold: dict[str, dict[str, float]] = field(default_factory=dict)  # signal -> kept, saved, exited
    reason: str = ""
    fitted: EarlyExit | None = None  # the gate fitted on every tuning query, chosen or not (held-out reports)

    def as_json(self) -> dict:
        return {"stage": self.stage, "target_share_of_gain": self.target,
                "chosen": self.config.model_dump(mode="json", exclude_defaults=True) if self.config else None,
                "fitted": self.fitted.model_dump(mode="json", exclude_defaults=True) if self.fitted else None,
                "out_of_fold": self.out_of_fold, "reason": self.reason}


def _config(kind: str, fitted: tuple[np.ndarray, float] | None, t: float, window: int) -> EarlyExit:
    if kind == "gate":
        w, b = fitted  # type: ignore[misc]
        return EarlyExit(signal="gate", threshold=round(float(t), 6), window=window,
                         weights={k: round(float(v), 6) for k, v in zip(GATE_FEATURES, w)}, bias=round(b, 6))
    return EarlyExit(signal="margin", threshold=round(float(t), 6), window=window)


def tune_exit(data: ExitData, folds: list[list[int]], stage: str, target: float = 0.9, window: int = 10,
              slack: float = 0.0) -> ExitChoice:
    """Cross-validate both signals over ``folds`` (positions into ``data``); fit the winner on everything."""
    choice = ExitChoice(stage, target, None)
    if data.delta.sum() <= 0:
        choice.reason = "the stage gains nothing on these queries: nothing to keep a share of"
        return choice
    best = None
    for kind in ("margin", "gate"):
        skip = np.zeros(len(data.delta), dtype=bool)
        for f, held in enumerate(folds):
            train = [c for g, fl in enumerate(folds) if g != f for c in fl]
            fitted, t = _fit(kind, data.take(train), target)
            if np.isfinite(t):
                sig = _signal(kind, data.take(held), fitted)
                skip[np.asarray(held)] = np.isfinite(sig) & (sig >= t)
        kept, saved = shares(skip, data)
        choice.out_of_fold[kind] = {"kept_share": round(kept, 4), "saved_share": round(saved, 4),
                                    "exited_share": round(float(skip.mean()), 4)}
        if kept >= target - slack and saved > 0 and (best is None or saved > best[1]):
            best = (kind, saved)
    if best is None:
        choice.reason = f"no signal kept {target:.0%} of the gain out of fold while saving work"
        fitted, t = _fit("gate", data, target)  # what the gate would do, for the held-out report only
        if np.isfinite(t):
            choice.fitted = _config("gate", fitted, t, window)
        return choice
    kind = best[0]
    fitted, t = _fit(kind, data, target)
    if not np.isfinite(t):
        choice.reason = f"on all queries no {kind} threshold keeps {target:.0%} of the gain"
        return choice
    choice.config = choice.fitted = _config(kind, fitted, t, window)
    choice.reason = f"{kind}: saved {best[1]:.0%} of the pairs out of fold, keeping at least {target:.0%} of the gain"
    return choice


def curve(signal: np.ndarray, data: ExitData, points: int = 60) -> list[tuple[float, float]]:
    """(share of units saved, share of gain kept) as the threshold falls from never exiting to always."""
    ok = np.isfinite(signal)
    vals = np.unique(signal[ok])
    if not len(vals):
        return [(0.0, 1.0)]
    ts = np.quantile(vals, np.linspace(1, 0, points)) if len(vals) > points else vals[::-1]
    out = [(0.0, 1.0)]
    for t in ts:
        kept, saved = shares(ok & (signal >= t), data)
        out.append((saved, kept))
    return out
