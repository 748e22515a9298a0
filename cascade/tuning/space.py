"""What ``cascade tune`` sweeps: fusion variants and, per stage, on/off, depth (``rerank``) and ``combine`` weights.

A :class:`Setting` is one point of the grid: which fusion variant, and for
each stage of the profile whether it runs, how many candidates it re-scores,
how many it keeps and how it combines its score with the step before it.
Combine weights are written relative to the stage (``@self``) and to the
step before it in that setting (``@prev``: the previous enabled stage, or
fusion), so one weight pair means the same thing whichever stages run.

``keep`` is not swept on its own: at nDCG@10 a stage's ``keep`` only matters
as the cap on the next stage's window, so that window is swept as the next
stage's ``rerank`` and the proposal raises ``keep`` where it would cut it.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

from cascade.config import LinearConfig, RRFConfig
from cascade.stages.base import Combine, EarlyExit

SELF, PREV = "@self", "@prev"
DEFAULT_DEPTHS = (5, 10, 20, 30)
WEIGHT_PAIRS = ((1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (1.0, 3.0), (2.0, 1.0))
NORMS = ("zscore", "minmax", "rank")
MAX_SETTINGS = 20_000


@dataclass(frozen=True)
class FusionVariant:
    """One fusion configuration to try (RRF k or linear normalization, weights, keep)."""

    config: RRFConfig | LinearConfig = field(compare=False, hash=False)
    key: str = ""

    @classmethod
    def of(cls, cfg: RRFConfig | LinearConfig) -> "FusionVariant":
        return cls(cfg, cfg.model_dump_json())

    def label(self, retrievers: Sequence[str]) -> str:
        c = self.config
        how = f"rrf k={c.k}" if isinstance(c, RRFConfig) else f"linear {c.normalize}"
        w = ":".join(f"{c.weights.get(r, 1.0):g}" for r in retrievers)
        return f"{how}, {':'.join(retrievers)} {w}, keep {c.keep}"


@dataclass(frozen=True)
class StageSetting:
    """How one stage runs in a setting. ``combine``: (normalize, ((source, weight), ...)) or None (own score).

    ``exit`` (early exit) is not part of equality: the sweep never sets it, and
    settings with one are evaluated without the sweep's memo.
    """

    enabled: bool
    rerank: int | None = None
    keep: int | None = None
    combine: tuple[str, tuple[tuple[str, float], ...]] | None = None
    exit: EarlyExit | None = field(default=None, compare=False, hash=False)

    def resolved_combine(self, name: str, prev: str) -> Combine | None:
        """The combine with ``@self``/``@prev`` named; sources weighted 0 are left out."""
        if self.combine is None:
            return None
        norm, pairs = self.combine
        weights: dict[str, float] = {}
        for src, w in pairs:
            src = name if src == SELF else prev if src == PREV else src
            if w:
                weights[src] = weights.get(src, 0.0) + w
        if set(weights) <= {name}:
            return None  # own score alone: the same order as no combine
        return Combine(weights=weights, normalize=norm)  # type: ignore[arg-type]

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        out = f"rerank {self.rerank}" if self.rerank else "rerank all"
        if self.combine:
            norm, pairs = self.combine
            out += ", " + " + ".join(f"{w:g}*{s.replace(SELF, 'self').replace(PREV, 'prev')}" for s, w in pairs) + \
                   (f" ({norm})" if len(pairs) > 1 else "")
        if self.exit is not None:
            out += f", exit {self.exit.signal}>={self.exit.threshold:.3g}"
        return out


@dataclass(frozen=True)
class Setting:
    """One point of the grid: a fusion variant (its index) and a setting per stage, in profile order."""

    fusion: int
    stages: tuple[StageSetting, ...]


@dataclass(frozen=True)
class Space:
    """What is swept for pair stages: depths, (own, previous) weight pairs and normalizations."""

    depths: tuple[int, ...] = DEFAULT_DEPTHS
    weights: tuple[tuple[float, float], ...] = WEIGHT_PAIRS
    norms: tuple[str, ...] = NORMS


@dataclass(frozen=True)
class StageSpec:
    """What the sweep knows of one stage of the profile."""

    name: str
    kind: str
    cost_unit: str
    scored_by: str  # "rows": per candidate row of a fused set (reads features); "pairs": per (query, document)
    current: StageSetting


def current_combine(c: Combine | None) -> tuple[str, tuple[tuple[str, float], ...]] | None:
    return None if c is None else (c.normalize, tuple(sorted(c.weights.items())))


def fusion_variants(current: RRFConfig | LinearConfig, retrievers: Sequence[str], *,
                    keeps: Sequence[int] = (50, 100), small: bool = False) -> list[FusionVariant]:
    """The current fusion first, then RRF (k 10, 60) and linear (min-max, z-score) with each retriever weighted
    1, then each one doubled in turn, at the current keep and at each of ``keeps`` (``small``: current keep only)."""
    out = [FusionVariant.of(current)]
    methods: list[Any] = [RRFConfig(k=k) for k in (10, 60)] + [LinearConfig(normalize=n) for n in ("minmax", "zscore")]
    weightings = [{r: 1.0 for r in retrievers}]
    if len(retrievers) > 1:
        weightings += [{r: (2.0 if r == boost else 1.0) for r in retrievers} for boost in retrievers]
    all_keeps = [current.keep] if small else sorted({current.keep, *(k for k in keeps if k < current.keep)})
    for m, w, keep in itertools.product(methods, weightings, all_keeps):
        v = FusionVariant.of(m.model_copy(update={"weights": w, "keep": keep}))
        if v not in out:
            out.append(v)
    return out


def stage_options(spec: StageSpec, space: Space) -> list[StageSetting]:
    """The settings tried for one stage: off, its current setting, and (pair stages) each depth with each combine.

    Row stages (LTR on features) are cheap per candidate; their window is swept
    through fusion's ``keep``. Pair stages (cross-encoders) are swept over
    the space's depths, each alone and combined with the step before them.
    """
    cur = dataclasses.replace(spec.current, exit=None)  # the sweep compares settings without early exits
    opts = [StageSetting(False), cur]
    if spec.scored_by == "pairs":
        combos: list[Any] = [None]
        for (ws, wp), norm in itertools.product(space.weights, space.norms):
            if wp == 0:
                continue
            combos.append((norm, ((SELF, ws), (PREV, wp))))
        for d in space.depths:
            for comb in combos:
                s = StageSetting(True, d, cur.keep, comb)
                if s not in opts:
                    opts.append(s)
    return opts


def valid(fusion: int, stages: Sequence[StageSetting], specs: Sequence[StageSpec]) -> bool:
    """A row stage (LTR) runs only over the current fusion: its model learned features (the fusion score, the
    number of candidates) as that fusion makes them, and another fusion would hand it values it never saw.
    Trying a fusion with the LTR stage means logging features and retraining it first."""
    return fusion == 0 or not any(ss.enabled and sp.scored_by == "rows" for sp, ss in zip(specs, stages))


def grid(variants: Sequence[FusionVariant], specs: Sequence[StageSpec], space: Space) -> list[Setting]:
    """Every valid combination of fusion variant and stage options (refused past MAX_SETTINGS: narrow the grid)."""
    per_stage = [stage_options(s, space) for s in specs]
    n = len(variants)
    for p in per_stage:
        n *= len(p)
    if n > MAX_SETTINGS:
        raise ValueError(f"the grid has {n:,} settings (more than {MAX_SETTINGS:,}); sweep fewer depths (--depths), "
                         f"normalizations (--norms) or a smaller fusion grid (--fusion-grid small)")
    return [Setting(v, tuple(st)) for v in range(len(variants)) for st in itertools.product(*per_stage)
            if valid(v, st, specs)]


def current_setting(specs: Sequence[StageSpec]) -> Setting:
    """The profile as it is: fusion variant 0 (the current fusion) and each stage's current setting."""
    return Setting(0, tuple(s.current for s in specs))
