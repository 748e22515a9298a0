"""Corpus records to typed index fields, the same for every backend.

A record's fields are read by the config's ``source`` paths and typed once, so
the embedded index and an OpenSearch bulk load store the same values and a bad
record is reported the same way (file and line) whichever backend ingests it.
"""

from __future__ import annotations

from typing import Any

import math

from cascade.config import IndexConfig
from cascade.datasets import LoadStats
from cascade.query import DATE_RANGE_TEXT, DATE_SECONDS, INT64, to_epoch_seconds


def lookup(doc: dict[str, Any], dotted: str) -> Any:
    """``doc[a][b]`` for ``a.b``; a literal dotted key wins (sources indexed with one)."""
    if dotted in doc:
        return doc[dotted]
    cur: Any = doc
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def extract_fields(rec: dict, cfg: IndexConfig) -> dict[str, Any]:
    """The configured fields of one corpus record, typed; raises ValueError naming the field."""
    out: dict[str, Any] = {}
    for name, f in cfg.fields.items():
        v = lookup(rec, f.source or name)
        if v is None or v == "" or v == []:
            continue
        if f.type == "text":
            out[name] = " ".join(map(str, v)) if isinstance(v, list) else str(v)
        elif f.type == "keyword":
            vals = v if isinstance(v, list) else [v]
            if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in vals):
                raise ValueError(f"field {name!r}: keyword values must be strings, got {v!r}")
            out[name] = [str(x) for x in vals] if isinstance(v, list) else str(v)
        elif f.type in ("integer", "float"):
            if isinstance(v, bool):
                raise ValueError(f"field {name!r}: expected a number, got {v!r}")
            out[name] = _number(name, f.type, v)
        elif f.type == "date":
            try:
                secs = to_epoch_seconds(v, name)
            except Exception:
                raise ValueError(f"field {name!r}: expected a date like 2021-03-04, got {str(v)[:80]!r}") from None
            if not DATE_SECONDS[0] <= secs <= DATE_SECONDS[1]:  # NaN fails this too
                raise ValueError(f"field {name!r}: {str(v)[:80]!r} is outside {DATE_RANGE_TEXT}")
            out[name] = v
    return out


def _number(name: str, ftype: str, v: Any) -> int | float:
    """A finite number in the backends' range: NaN would match range filters on one path and not the other."""
    if ftype == "integer" and isinstance(v, str) and v.strip().lstrip("+-").isdigit():
        v = int(v.strip())  # "12345678901234567" exactly, not through a float
    if isinstance(v, int) and ftype == "integer":
        if not INT64[0] <= v <= INT64[1]:
            raise ValueError(f"field {name!r}: {str(v)[:40]} is outside the 64-bit integer range")
        return v
    try:
        num = float(v)
    except OverflowError:
        raise ValueError(f"field {name!r}: {str(v)[:40]} is too large for a number field") from None
    except (TypeError, ValueError):
        raise ValueError(f"field {name!r}: expected a number, got {str(v)[:80]!r}") from None
    if not math.isfinite(num):
        raise ValueError(f"field {name!r}: {v!r} is not a finite number")
    if ftype == "integer":
        if not num.is_integer():
            raise ValueError(f"field {name!r}: expected an integer, got {v!r}")
        if not INT64[0] <= num <= INT64[1]:
            raise ValueError(f"field {name!r}: {v!r} is outside the 64-bit integer range")
        return int(num)
    return num


def typed_fields(rec: dict, line_no: int, cfg: IndexConfig, source: str, stats: LoadStats,
                 skip_bad: bool) -> dict[str, Any] | None:
    """The record's fields, or None when it is bad and ``skip_bad`` (counted in ``stats``); else CorpusError."""
    try:
        return extract_fields(rec, cfg)
    except ValueError as exc:
        stats.bad(source, line_no, str(exc), skip_bad)
        return None
