"""Corpus records to typed index fields, the same for every backend.

A record's fields are read by the config's ``source`` paths and typed once, so
the embedded index and an OpenSearch bulk load store the same values and a bad
record is reported the same way (file and line) whichever backend ingests it.
"""

from __future__ import annotations

from typing import Any

from cascade.config import IndexConfig
from cascade.errors import CorpusError
from cascade.query import to_epoch_seconds


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
            try:
                num = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"field {name!r}: expected a number, got {v!r}") from None
            if f.type == "integer":
                if not num.is_integer():
                    raise ValueError(f"field {name!r}: expected an integer, got {v!r}")
                num = int(num)
            out[name] = num
        elif f.type == "date":
            try:
                to_epoch_seconds(v, name)
            except Exception:
                raise ValueError(f"field {name!r}: expected a date like 2021-03-04, got {v!r}") from None
            out[name] = v
    return out


def typed_fields(rec: dict, line_no: int, cfg: IndexConfig, source: str, skip_bad: bool) -> dict[str, Any] | None:
    """The record's fields, or None when it is bad and ``skip_bad`` (the caller counts it); else CorpusError."""
    try:
        return extract_fields(rec, cfg)
    except ValueError as exc:
        if not skip_bad:
            raise CorpusError(source, line_no, f"{exc} (use --skip-bad-lines to skip and count such lines)") from None
        return None
