"""Experiments declared in an index's config: which rank profiles compete, on how much traffic, how.

An experiment lives in the index's YAML next to the profiles it compares, so
a reload starts, changes or stops it like any other ranking change:

```yaml
experiments:
  ce-pays:
    mode: interleave            # ab | interleave (2 arms) | multileave (3 or more)
    arms: [ltr, default]        # rank profiles of this index; the first is the control
    traffic: 0.5                # share of this index's users in the experiment
    start: 2026-12-01T00:00:00Z
    sample_size: 2000           # impressions wanted (progress and verdict say how far)
    randomize: {method: randpair, share: 0.1}   # ab only: swap one adjacent pair on 10% of impressions
```

Validation names the key (``experiments.ce-pays.arms.1: no rank profile
'ltrr' ...``); the service refuses a start or a reload with a bad one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["ab", "interleave", "multileave"]
EXPERIMENT_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class Randomization(BaseModel):
    """RandPair: on a share of an arm's impressions, one adjacent pair ``(k, k+1)`` of the top ``depth`` is
    swapped, ``k`` uniform. The query log records the swap; ``cascade train labels`` estimates position bias
    from it (the same documents one rank apart), which no amount of unrandomized traffic can do reliably."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["randpair"] = "randpair"
    share: float = Field(gt=0, le=1, allow_inf_nan=False, description="Share of impressions randomized.")
    depth: int = Field(default=10, ge=2, le=100, description="Swaps stay within the top `depth` ranks.")
    arms: list[str] | None = Field(default=None, description="Arms that randomize (default: every arm).")

    def swap(self, u: float, v: float, shown: int) -> int | None:
        """The 1-based rank ``k`` swapped with ``k + 1`` for uniform draws ``u`` (whether) and ``v`` (which
        pair), or None; pairs exist among the first ``min(depth, shown)`` results."""
        pairs = min(self.depth, shown) - 1
        if u >= self.share or pairs < 1:
            return None
        return 1 + min(int(v * pairs), pairs - 1)


class ExperimentConfig(BaseModel):
    """One experiment over rank profiles of its index."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    mode: Mode = Field(description="ab: each user sees one arm; interleave: team-draft interleaving of 2 arms in "
                                   "one list; multileave: team-draft multileaving of 3 or more.")
    arms: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=2, description="Rank profiles of this index; the first is the control.")
    shares: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        default=None, description="ab only: relative traffic per arm (default: equal).")
    traffic: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False,
                           description="Share of the index's assignment units (users) in this experiment.")
    start: dt.datetime | None = Field(default=None, description="When it starts (ISO 8601; default: now).")
    stop: dt.datetime | None = Field(default=None, description="When it stops (default: never).")
    sample_size: int | None = Field(default=None, ge=1, description="Impressions wanted; reports show progress.")
    salt: str | None = Field(default=None, max_length=128,
                             description="Salt of the assignment hash (default: the experiment id). A new salt "
                                         "reshuffles users between arms.")
    metric: Literal["clicks", "ctr", "mrr"] = Field(
        default="clicks", description="ab: the per-impression outcome tested (clicks per query, clicked or not, "
                                      "reciprocal rank of the top click).")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Significance level of the verdict.")
    randomize: Randomization | None = Field(
        default=None, description="ab only: RandPair result randomization on a share of impressions, for "
                                  "position-bias estimation (`cascade train labels`).")

    @model_validator(mode="after")
    def _shape(self) -> "ExperimentConfig":
        if len(set(self.arms)) != len(self.arms):
            dup = next(a for a in self.arms if self.arms.count(a) > 1)
            raise ValueError(f"arms: {dup!r} is listed twice; each arm is a different profile")
        if self.mode == "interleave" and len(self.arms) != 2:
            raise ValueError(f"arms: interleave compares exactly 2 arms (got {len(self.arms)}); use multileave "
                             f"for 3 or more")
        if self.mode == "multileave" and len(self.arms) < 3:
            raise ValueError(f"arms: multileave needs 3 or more arms (got {len(self.arms)}); use interleave for 2")
        if self.shares is not None:
            if self.mode != "ab":
                raise ValueError(f"shares: only ab experiments split users between arms; {self.mode} shows "
                                 f"every arm in each list")
            if set(self.shares) != set(self.arms):
                raise ValueError(f"shares: give one share per arm (arms: {self.arms}, shares: {sorted(self.shares)})")
        if self.randomize is not None:
            if self.mode != "ab":
                raise ValueError(f"randomize: only ab experiments randomize ({self.mode} lists mix arms already)")
            unknown = [a for a in self.randomize.arms or [] if a not in self.arms]
            if unknown:
                raise ValueError(f"randomize.arms: {unknown[0]!r} is not an arm of this experiment ({self.arms})")
        if self.start and self.stop and _utc(self.stop) <= _utc(self.start):
            raise ValueError("stop: must be after start")
        return self

    def arm_shares(self) -> list[float]:
        """Each arm's share of the experiment's users (ab), summing to 1, in ``arms`` order."""
        if self.mode != "ab":
            return [1.0 / len(self.arms)] * len(self.arms)
        raw = [self.shares[a] for a in self.arms] if self.shares else [1.0] * len(self.arms)
        total = sum(raw)
        return [r / total for r in raw]

    def status(self, now: dt.datetime | None = None) -> Literal["scheduled", "running", "stopped"]:
        now = now or dt.datetime.now(dt.timezone.utc)
        if self.start is not None and now < _utc(self.start):
            return "scheduled"
        if self.stop is not None and now >= _utc(self.stop):
            return "stopped"
        return "running"

    def fingerprint(self) -> str:
        """What the collected data depends on (mode, arms, shares, salt): aggregates are kept per fingerprint,
        so changing any of these starts the experiment's counts afresh instead of mixing two designs."""
        blob = json.dumps([self.mode, self.arms, self.arm_shares(), self.salt], separators=(",", ":"))
        return hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


def check_experiments(experiments: dict[str, ExperimentConfig], profiles: list[str]) -> None:
    """Checks against the index: arms are its profiles, ids are well formed, traffic fits. ``ValueError("KEY: ...")``."""
    import re

    total = 0.0
    for eid, exp in experiments.items():
        key = f"experiments.{eid}"
        if not re.match(EXPERIMENT_ID, eid):
            raise ValueError(f"{key}: an experiment id is lowercase letters, digits, '.', '_' and '-' (at most 64)")
        for i, arm in enumerate(exp.arms):
            if arm not in profiles:
                raise ValueError(f"{key}.arms.{i}: no rank profile {arm!r} in this index (profiles: {profiles})")
        total += exp.traffic
    if total > 1.0 + 1e-9:
        raise ValueError(f"experiments: their traffic shares add up to {total:g}; an index's users can be split "
                         f"at most once (lower `traffic` so the sum is at most 1)")
