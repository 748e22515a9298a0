"""Work a stage did besides its ``scored`` count (an LLM's tokens), metered per stage call.

A stage's trace counts its main cost in its ``cost_unit`` (``scored``). Some
stages also spend a second resource that varies per call, e.g. an LLM's
prompt and completion tokens. The controller opens a meter around each
stage call (:func:`metered`); whatever runs inside it, in tasks and threads
started from it too (a context variable travels with them), adds to it with
:func:`record`. The counts land in the trace's ``usage`` and from there in
``explain``, metrics and ``cascade eval``'s cost columns, without the stage
returning them through its scoring interface.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_METER: ContextVar[dict[str, int] | None] = ContextVar("cascade_stage_usage", default=None)


def record(unit: str, amount: int) -> None:
    """Add ``amount`` of ``unit`` (e.g. ``"tokens"``) to the stage call being metered; a no-op outside one."""
    meter = _METER.get()
    if meter is not None and amount:
        meter[unit] = meter.get(unit, 0) + int(amount)


@contextmanager
def metered() -> Iterator[dict[str, int]]:
    """A fresh meter for one stage call; the yielded dict holds what was recorded once the block ends."""
    meter: dict[str, int] = {}
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)
