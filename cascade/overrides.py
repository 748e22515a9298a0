"""Per-request overrides of how deep a cascade goes: keep and rerank per step.

A caller with a tight latency budget may ask a stage to re-rank fewer
candidates or keep fewer; asking for more than the profile declares would let
one request buy unbounded model time, so it is refused with the bound
(:class:`~cascade.errors.OverrideError`). Evaluation and benchmarks may go
deeper (``deeper=True``) to sweep depths on the same loaded models. An
overridden cascade is a shallow view: retrievers, backend and models are
shared; only the small stage objects and the fusion settings are copied.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Protocol, Sequence

from cascade.errors import OverrideError


class _Steps(Protocol):
    """What overrides read of a cascade (its fusion config and stages); the controller provides it."""

    config: Any
    stages: Sequence[Any]

ATTRS = ("keep", "rerank")


def _get(ov: Any, attr: str) -> Any:
    return ov.get(attr) if isinstance(ov, Mapping) else getattr(ov, attr, None)


def override_bounds(casc: _Steps) -> dict[str, dict[str, int | None]]:
    """The largest keep and rerank a request may ask of each step."""
    most = casc.config.fusion.keep  # no stage ever sees more candidates than fusion keeps
    out: dict[str, dict[str, int | None]] = {"fusion": {"keep": most, "rerank": None}}
    for st in casc.stages:
        out[st.name] = {"keep": min(st.keep or most, most), "rerank": min(st.rerank or most, most)}
    return out


def apply_overrides(casc: _Steps, overrides: Mapping[str, Any], *, deeper: bool = False) -> tuple[Any, list[Any]]:
    """(fusion config, stages) of ``casc`` with the overrides applied, or OverrideError naming the override."""
    limits = override_bounds(casc)
    steps = sorted(limits)
    fusion = casc.config.fusion
    stages = list(casc.stages)
    for name, ov in sorted(overrides.items()):
        where = f"overrides.{name}"
        if name not in limits:
            raise OverrideError(where, f"no step named {name!r} can be overridden; steps: {steps}", "unknown_step")
        unknown = sorted(set(ov) - set(ATTRS)) if isinstance(ov, Mapping) else []
        if unknown:
            raise OverrideError(f"{where}.{unknown[0]}", f"not overridable; a step takes {' and '.join(ATTRS)}",
                                "not_overridable")
        for attr in ATTRS:
            want = _get(ov, attr)
            if want is None:
                continue
            if isinstance(want, bool) or not isinstance(want, int) or want < 1:
                raise OverrideError(f"{where}.{attr}", f"expected a whole number >= 1, got {want!r}", "invalid")
            bound = limits[name][attr]
            if bound is None:
                raise OverrideError(f"{where}.{attr}", f"{name} has no {attr}; it takes keep only", "not_overridable")
            if want > bound and not deeper:
                raise OverrideError(f"{where}.{attr}", f"at most {bound} (what the profile declares for {name}), "
                                                       f"got {want}", "above_config", limit=bound)
        if name == "fusion":
            if _get(ov, "keep") is not None:
                fusion = fusion.model_copy(update={"keep": _get(ov, "keep")})
            continue
        i = next(i for i, st in enumerate(stages) if st.name == name)
        st: Any = copy.copy(stages[i])
        for attr in ATTRS:
            if _get(ov, attr) is not None:
                setattr(st, attr, _get(ov, attr))
        stages[i] = st
    return fusion, stages


def canonical(overrides: Mapping[str, Any]) -> list[list[Any]]:
    """Overrides in a stable form for cache keys: the same request in any key order is one entry."""
    out = []
    for n, o in sorted(overrides.items()):
        keep, rerank = _get(o, "keep"), _get(o, "rerank")
        if keep is not None or rerank is not None:
            out.append([n, keep, rerank])
    return out
