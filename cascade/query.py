"""Queries and their filters, validated against an index's config.

Filters use OpenSearch-like shapes so a request reads the same whichever backend
answers it: ``{"journal": "Nature"}`` (term), ``{"journal": ["Nature", "Cell"]}``
(any of), ``{"year": {"gte": 2010, "lt": 2020}}`` (range on numbers or dates).
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from cascade.errors import QueryError

RANGE_OPS = ("gt", "gte", "lt", "lte")


@dataclass(frozen=True)
class TermFilter:
    field: str
    type: str  # keyword | integer | float | date
    values: tuple[Any, ...]


@dataclass(frozen=True)
class RangeFilter:
    field: str
    type: str
    gt: Any = None
    gte: Any = None
    lt: Any = None
    lte: Any = None


Filter = TermFilter | RangeFilter


@dataclass(frozen=True)
class Query:
    """What a caller asks for. ``filters`` are parsed by :func:`validate_query` into typed filters."""

    text: str
    filters: dict[str, Any] = field(default_factory=dict)
    size: int = 10
    offset: int = 0
    user_id: str | None = None
    session_id: str | None = None
    id: str | None = None  # a query id, for evaluation runs
    user_attributes: dict[str, str] = field(default_factory=dict)  # e.g. the user's segment (personal features)
    parsed_filters: tuple[Filter, ...] = ()


def to_epoch_seconds(value: Any, name: str) -> float:
    """Dates are compared as UTC epoch seconds everywhere (filters, stored columns, features)."""
    if isinstance(value, bool):
        raise QueryError(name, f"expected a date (ISO 8601 string), got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        d = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return d.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp()
    if isinstance(value, str):
        s = value.strip()
        try:
            if len(s) == 4 and s.isdigit():
                return dt.datetime(int(s), 1, 1, tzinfo=dt.timezone.utc).timestamp()
            d = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise QueryError(name, f"expected a date like 2021-03-04 or 2021-03-04T10:00:00Z, got {value!r}") from None
        return to_epoch_seconds(d, name)
    raise QueryError(name, f"expected a date (ISO 8601 string), got {type(value).__name__}")


INT64 = (-(1 << 63), (1 << 63) - 1)  # an integer field's values (tantivy i64, OpenSearch long)
# Dates as epoch seconds that every backend stores: tantivy keeps nanoseconds in an i64 (1677-09-22 .. 2262-04-11).
DATE_SECONDS = (-9223372036.0, 9223372036.0)
DATE_RANGE_TEXT = "1677-09-22 to 2262-04-11 (the dates an index can hold)"
FLOAT_RANGE = (-sys.float_info.max, sys.float_info.max)  # an integer beyond it (10**400) would overflow float()


def _coerce(value: Any, ftype: str, name: str, op: str | None = None) -> Any:
    """A filter value as the field stores it, with the same rules as indexing (connectors/records.py).

    Keyword fields take strings, and integers (indexing stores an integer keyword
    value as its decimal text, so the filter 7 matches the stored "7"). Number
    fields take finite JSON numbers only: "2005" is refused rather than parsed,
    so a client that quotes numbers learns it at once. Dates take ISO strings or
    epoch seconds. ``op`` is the range operator when ``value`` is a bound: a
    bound beyond what the field can hold is moved to its edge (the same
    documents match) and a fractional bound on an integer field to the integer
    that keeps the same documents (``gte 2019.5`` is ``gte 2020``); a term
    beyond the field is refused.
    """
    if ftype == "keyword":
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        raise QueryError(name, f"expected a string for keyword field, got {_shown(value)}")
    if ftype in ("integer", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (a string: send the number without quotes)" if isinstance(value, str) else ""
            raise QueryError(name, f"expected a number for {ftype} field, got {_shown(value)}{hint}")
        if isinstance(value, float) and not math.isfinite(value):
            raise QueryError(name, f"expected a finite number, got {value!r}")
        if ftype == "float":
            return float(_within(value, FLOAT_RANGE, name, op, "the range of a 64-bit float"))
        if isinstance(value, float):
            if not value.is_integer():
                if op is None:
                    raise QueryError(name, f"expected an integer, got {value!r}")
                value = math.ceil(value) if op in ("gte", "lt") else math.floor(value)
            value = int(value)
        return _within(value, INT64, name, op, "the 64-bit integer range")
    if ftype == "date":
        if isinstance(value, float) and not math.isfinite(value):
            raise QueryError(name, f"expected a date, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool):
            value = _within(value, (-(10 ** 15), 10 ** 15), name, op, DATE_RANGE_TEXT)  # before float() overflows
        return float(_within(to_epoch_seconds(value, name), DATE_SECONDS, name, op, DATE_RANGE_TEXT))
    raise QueryError(name, f"field of type {ftype} cannot be filtered on")


def _within(value: Any, edges: tuple[Any, Any], name: str, op: str | None, what: str) -> Any:
    lo, hi = edges
    if lo <= value <= hi:
        return value
    if op is not None:
        return lo if value < lo else hi
    raise QueryError(name, f"{_shown(value)} is outside {what}, so it matches nothing a field can hold")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_filters(filters: dict[str, Any], field_types: dict[str, str]) -> tuple[Filter, ...]:
    """Check each filter against the index's fields and turn it into a typed filter."""
    if not isinstance(filters, dict):
        raise QueryError("filters", "expected an object mapping field names to values")
    filterable = {n: t for n, t in field_types.items() if t != "text"}
    out: list[Filter] = []
    for fname, spec in filters.items():
        key = f"filters.{fname}"
        if fname not in field_types:
            raise QueryError(key, f"unknown field; filterable fields: {sorted(filterable) or 'none'}")
        ftype = field_types[fname]
        if ftype == "text":
            raise QueryError(key, f"text fields cannot be filtered on; filterable fields: {sorted(filterable) or 'none'}")
        if isinstance(spec, dict):
            bad = [k for k in spec if k not in RANGE_OPS]
            if bad or not spec:
                raise QueryError(key, f"range filters take {', '.join(RANGE_OPS)}; got {sorted(spec) or 'nothing'}")
            if ftype == "keyword":
                raise QueryError(key, "range filters need a numeric or date field")
            bounds = {op: _coerce(v, ftype, f"{key}.{op}", op) for op, v in spec.items()}
            out.append(RangeFilter(fname, ftype, **bounds))
        elif isinstance(spec, list):
            if not spec:
                raise QueryError(key, "an empty list matches nothing; give at least one value")
            out.append(TermFilter(fname, ftype, tuple(_coerce(v, ftype, key) for v in spec)))
        else:
            out.append(TermFilter(fname, ftype, (_coerce(spec, ftype, key),)))
    return tuple(out)


def validate_query(query: Query, field_types: dict[str, str], max_size: int, max_chars: int) -> Query:
    """Return the query with typed filters, or raise :class:`QueryError` naming the field."""
    if not isinstance(query.text, str) or not query.text.strip():
        raise QueryError("text", "query text is empty")
    if len(query.text) > max_chars:
        raise QueryError("text", f"query is {len(query.text)} characters; the limit is {max_chars}")
    if not 1 <= query.size <= max_size:
        raise QueryError("size", f"must be between 1 and {max_size}, got {query.size}")
    if query.offset < 0 or query.offset + query.size > max_size:
        raise QueryError("from", f"from + size must be at most {max_size}, got {query.offset} + {query.size}")
    parsed = parse_filters(query.filters, field_types)
    return Query(
        text=query.text.strip(),
        filters=query.filters,
        size=query.size,
        offset=query.offset,
        user_id=query.user_id,
        session_id=query.session_id,
        id=query.id,
        parsed_filters=parsed,
        user_attributes=query.user_attributes,
    )
