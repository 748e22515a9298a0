"""Per-request overrides of how deep a cascade goes, only ever shallower than its config.

A caller with a tight latency budget may ask a stage to re-rank fewer
candidates or keep fewer; asking for more than the config declares would let
one request buy unbounded model time, so it is refused with the bound. The
overridden cascade is a shallow view: the retrievers, backend and models are
shared, only the small stage objects and the fusion settings are copied.
"""

from __future__ import annotations

import copy
from typing import Any

from cascade.controller import Cascade
from cascade.service.errors import ApiError
from cascade.service.schemas import StepOverride


def bounds(casc: Cascade) -> dict[str, dict[str, int | None]]:
    """The largest keep and rerank a request may ask of each step."""
    most = casc.config.fusion.keep  # no stage ever sees more candidates than fusion keeps
    out: dict[str, dict[str, int | None]] = {"fusion": {"keep": most, "rerank": None}}
    for st in casc.stages:
        if hasattr(st, "keep") and hasattr(st, "rerank"):
            out[st.name] = {"keep": min(st.keep or most, most), "rerank": min(st.rerank or most, most)}
    return out


def apply_overrides(casc: Cascade, overrides: dict[str, StepOverride]) -> Cascade:
    """A view of ``casc`` with lower keep/rerank values, or ApiError(422) naming the override and its bound."""
    if not overrides:
        return casc
    limits = bounds(casc)
    steps = sorted(limits)
    fusion = casc.config.fusion
    stages = list(casc.stages)
    for name, ov in sorted(overrides.items()):
        where = f"overrides.{name}"
        if name not in limits:
            raise ApiError(422, where, f"no step named {name!r} can be overridden; steps: {steps}", "unknown_step")
        for attr in ("keep", "rerank"):
            want = getattr(ov, attr)
            if want is None:
                continue
            bound = limits[name][attr]
            if bound is None:
                raise ApiError(422, f"{where}.{attr}", f"{name} has no {attr}; it takes keep only", "not_overridable")
            if want > bound:
                raise ApiError(422, f"{where}.{attr}", f"at most {bound} (what the config declares for {name}), "
                                                       f"got {want}", "above_config", limit=bound)
        if name == "fusion":
            if ov.keep is not None:
                fusion = fusion.model_copy(update={"keep": ov.keep})
            continue
        i = next(i for i, st in enumerate(stages) if st.name == name)
        st: Any = copy.copy(stages[i])
        if ov.keep is not None:
            st.keep = ov.keep
        if ov.rerank is not None:
            st.rerank = ov.rerank
        stages[i] = st
    view = copy.copy(casc)
    if fusion is not casc.config.fusion:
        view.config = casc.config.model_copy(update={"fusion": fusion})
    view.stages = stages
    return view


def canonical(overrides: dict[str, StepOverride]) -> list[list[Any]]:
    """Overrides in a stable form for cache keys: the same request in any key order is one entry."""
    return [[n, o.keep, o.rerank] for n, o in sorted(overrides.items()) if o.keep is not None or o.rerank is not None]
