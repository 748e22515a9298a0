"""Which experiment and arm a search belongs to: a salted hash of the user, stateless and sticky.

Nothing is stored to remember an assignment: the same unit (the request's
``user_id``, else its ``session_id``, else the request id) hashes to the same
slot on every replica and after every restart. Two hashes are used:

- the **traffic slot** (index, unit) places a unit in at most one experiment
  of the index: experiments take consecutive ranges of [0, 1) in the order
  the config declares them, each as wide as its ``traffic`` share, so adding
  an experiment at the end moves nobody, and an experiment that has stopped
  leaves its range to the default profile;
- the **arm draw** (experiment salt, unit) picks the arm of an A/B test by its
  share, independently of the slot, so arms are balanced inside any slice.

Interleaved lists are drawn from a seed of (salt, unit, query): a user paging
through or repeating a query sees one consistent list, while different users
get independent coin flips, which is what makes team-draft credit unbiased.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Literal, Mapping

from cascade.experiments.config import ExperimentConfig, Mode

UnitKind = Literal["user", "session", "request"]


def unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from the parts (BLAKE2b: the same on every machine and Python version)."""
    h = hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def unit_seed(*parts: str) -> int:
    """A 64-bit seed from the parts, for a random generator that must be reproducible."""
    h = hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big")


def unit_of(user_id: str | None, session_id: str | None, request_id: str) -> tuple[str, UnitKind]:
    """The assignment unit: the user when known, else the session, else this request alone."""
    if user_id:
        return f"u:{user_id}", "user"
    if session_id:
        return f"s:{session_id}", "session"
    return f"r:{request_id}", "request"


@dataclass(frozen=True)
class Assignment:
    """A search's place in an experiment: for ``ab`` the arm it is served; for interleaving every arm, mixed."""

    experiment: str
    mode: Mode
    arms: tuple[str, ...]
    arm: str | None  # ab: the arm served; interleave/multileave: None (every arm contributes)
    unit: str
    unit_kind: UnitKind
    fingerprint: str
    seed: int = 0  # interleaving: the team-draft coin flips
    forced: bool = False  # an admin forced the arm (QA): served, never counted

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"id": self.experiment, "mode": self.mode, "arms": list(self.arms)}
        if self.arm is not None:
            out["arm"] = self.arm
        if self.forced:
            out["forced"] = True
        return out


def pick(shares: list[float], u: float) -> int:
    """The index whose cumulative share first exceeds ``u`` (the last one for rounding at 1.0)."""
    acc = 0.0
    for i, s in enumerate(shares):
        acc += s
        if u < acc:
            return i
    return len(shares) - 1


def assign(index: str, experiments: Mapping[str, ExperimentConfig], *, unit: str, unit_kind: UnitKind,
           query_text: str, now: dt.datetime | None = None) -> Assignment | None:
    """The experiment (and arm) this unit's search belongs to, or None (the index's default profile)."""
    if not experiments:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    slot = unit_hash("traffic", index, unit)
    lo = 0.0
    for eid, exp in experiments.items():  # declaration order: stable ranges
        hi = lo + exp.traffic
        if lo <= slot < hi:
            if exp.status(now) != "running":
                return None
            return _within(eid, exp, unit, unit_kind, query_text)
        lo = hi
    return None


def _within(eid: str, exp: ExperimentConfig, unit: str, unit_kind: UnitKind, query_text: str,
            arm: str | None = None, forced: bool = False) -> Assignment:
    salt = exp.salt or eid
    if exp.mode == "ab" and arm is None:
        arm = exp.arms[pick(exp.arm_shares(), unit_hash("arm", salt, unit))]
    seed = unit_seed("interleave", salt, unit, query_text) if exp.mode != "ab" and not forced else 0
    return Assignment(eid, exp.mode, tuple(exp.arms), arm, unit, unit_kind, exp.fingerprint(), seed, forced)


def forced(eid: str, exp: ExperimentConfig, arm: str, *, unit: str, unit_kind: UnitKind) -> Assignment:
    """An admin's QA request: ``arm`` of ``eid`` served alone (also for interleaving), and never counted."""
    return _within(eid, exp, unit, unit_kind, "", arm=arm, forced=True)
