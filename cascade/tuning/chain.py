"""Running one setting over one query's collected scores, with the stage contract's own arithmetic.

Nothing is re-scored here: a stage's scores for the query were collected once
(:mod:`cascade.tuning.collect`), and each setting re-orders them exactly as
the controller would, through :func:`cascade.stages.base.apply_scores`
(window, keep, combine, the unscored rest shifted below) and
:func:`cascade.stages.base.early_exit`. Rows are cut to what the next steps
can still move into the top 10, which changes no top-10 order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cascade.candidates import Candidates, stable_order
from cascade.stages.base import _normalize, apply_scores, early_exit, exit_features
from cascade.tuning.space import Setting, StageSetting, StageSpec
from cascade.tuning.stats import CUTOFF

if TYPE_CHECKING:
    from cascade.tuning.data import QueryData

ROW = "__row"  # the candidate's row in its fusion variant: how per-row stage scores follow reorders


@dataclass
class StepOut:
    """One step of one query under a setting: its top 10 and the work it did."""

    name: str
    top: list[str]
    units: int = 0  # candidates scored (pairs, rows)
    ran: bool = True  # False: disabled in the setting or exited early
    exited: bool = False
    signal: dict[str, float] | None = None  # the gate's features over its incoming scores (pair stages)
    incoming: int = 0  # candidates handed to it


@dataclass
class ChainOut:
    top: list[str]
    steps: list[StepOut] = field(default_factory=list)
    candidates: int = 0  # fused candidates (what features are computed over)
    out: Candidates | None = None  # the candidates after the last step
    units: tuple[int, ...] = ()  # per stage: candidates it scored (0: off or exited)


def _need(specs_settings: Sequence[StageSetting]) -> int | None:
    """Rows the rest of the chain can still move into the top 10 (None: all of them)."""
    need = CUTOFF
    for ss in specs_settings:
        if not ss.enabled:
            continue
        if ss.rerank is None:
            return None
        need = max(need, ss.rerank)
    return need


def own_scores(qd: "QueryData", spec: StageSpec, cands: Candidates, n: int, fusion: int) -> np.ndarray:
    """The stage's collected scores for the first ``n`` candidates."""
    if spec.scored_by == "rows":
        rows = cands.stage_scores[ROW][:n].astype(np.int64)
        return qd.rows[fusion][spec.name][rows]
    table = qd.pairs[spec.name]
    try:
        return np.fromiter((table[d] for d in cands.ids[:n]), dtype=np.float64, count=n)
    except KeyError as exc:  # the collection scored every window the grid can reach: a missing pair is a bug
        raise RuntimeError(f"no collected {spec.name} score for query {qd.qid}, document {exc}") from None


def run_stage(qd: "QueryData", spec: StageSpec, ss: StageSetting, cands: Candidates, prev: str, fusion: int,
              need: int | None, steps: bool) -> tuple[Candidates, StepOut | None, bool]:
    """One enabled stage over ``cands`` cut to ``need`` rows: (candidates out, its step record when asked,
    whether it ran)."""
    if need is not None and len(cands) > need:
        cands = cands.head(need)
    decision = early_exit(ss.exit, cands.score, qd.text) if ss.exit is not None else None
    signal = exit_features(cands.score, qd.text, ss.exit.window if ss.exit else 10) if steps else None
    if decision is not None:
        out = cands.head(ss.keep)
        return out, (StepOut(spec.name, out.ids[:CUTOFF], 0, False, True, signal, len(cands)) if steps else None), False
    n = min(ss.rerank or len(cands), len(cands))
    own = own_scores(qd, spec, cands, n, fusion)
    out = apply_scores(cands, own, spec.name, ss.keep, ss.resolved_combine(spec.name, prev))
    return out, (StepOut(spec.name, out.ids[:CUTOFF], n, True, False, signal, len(cands)) if steps else None), True


def last_top(qd: "QueryData", spec: StageSpec, ss: StageSetting, cands: Candidates, prev: str, fusion: int,
             memo: dict) -> tuple[list[str], int]:
    """The top 10 after the last stage of a setting, without building its output: the same arithmetic as
    :func:`cascade.stages.base.apply_scores` and ``combined`` (same normalization, same sum order, same stable
    sort), with each normalized score column computed once per query and window and shared by every weighting."""
    n = min(ss.rerank or len(cands), len(cands))
    base = ("cols", id(cands), spec.name, n)
    own = memo.get(base)
    if own is None:
        own = memo[base] = own_scores(qd, spec, cands, n, fusion)
    comb = ss.resolved_combine(spec.name, prev) if n else None
    if comb is None:
        rank_by = own
    else:
        rank_by = np.zeros(n)
        for src, w in comb.weights.items():
            key = (*base, src, comb.normalize)
            col = memo.get(key)
            if col is None:
                raw = own if src == spec.name else cands.stage_scores[src][:n] if src in cands.stage_scores else None
                if raw is not None:
                    raw = np.where(np.isnan(raw), np.nanmin(raw) if np.isfinite(raw).any() else 0.0, raw)
                    col = _normalize(raw, comb.normalize)
                memo[key] = col = col if raw is not None else False
            if col is not False:
                rank_by = rank_by + w * col
    order = stable_order(rank_by)[:CUTOFF]
    top = [cands.ids[i] for i in order]
    if len(top) < CUTOFF:
        top += cands.ids[n:n + CUTOFF - len(top)]
    return (top if ss.keep is None else top[:ss.keep]), n


def run(qd: "QueryData", setting: Setting, specs: Sequence[StageSpec], *, steps: bool = False,
        memo: dict | None = None, then: int | None = CUTOFF) -> ChainOut:
    """The final top 10 of ``setting`` for one query (``steps``: every step's too, for marginal gains).

    ``memo`` (a dict per query) shares the candidates after each prefix of stage settings between settings.
    ``then``: rows whatever follows ``specs`` will read (the collection asks for a later stage's deepest window;
    ``ChainOut.candidates_out`` holds them).
    """
    cands = qd.variants[setting.fusion]
    fused = len(cands)
    prev = "fusion"
    out_steps = [StepOut("fusion", cands.ids[:CUTOFF], 0, True, incoming=fused)] if steps else []
    units: tuple[int, ...] = ()
    for j, (spec, ss) in enumerate(zip(specs, setting.stages)):
        need = _need(setting.stages[j:])
        if need is not None:
            need = None if then is None else max(need, then)
        key = (setting.fusion, setting.stages[: j + 1], need) if memo is not None and not steps else None
        if key is not None and key in memo:
            cands, prev, units = memo[key]
            continue
        if (key is not None and ss.enabled and ss.exit is None and then == CUTOFF
                and not any(x.enabled for x in setting.stages[j + 1:])):  # the last stage: only its top 10 is read
            top, n = last_top(qd, spec, ss, cands, prev, setting.fusion, memo)
            units = (*units, n, *(0 for _ in setting.stages[j + 1:]))
            return ChainOut(top, [], fused, None, units)
        done = 0
        if ss.enabled:
            n_in = len(cands)
            cands, rec, ran = run_stage(qd, spec, ss, cands, prev, setting.fusion, need, steps)
            if ran:
                prev = spec.name
                done = min(ss.rerank or n_in, n_in)
            if rec is not None:
                out_steps.append(rec)
        elif steps:
            out_steps.append(StepOut(spec.name, cands.ids[:CUTOFF], 0, False, incoming=len(cands)))
        units = (*units, done)
        if key is not None:
            memo[key] = (cands, prev, units)
    return ChainOut(cands.ids[:CUTOFF], out_steps, fused, cands, units)
