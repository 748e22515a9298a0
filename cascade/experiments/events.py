"""User events after a search, in OpenSearch User Behavior Insights (UBI) field names, and their validation.

An event names the search it follows by ``query_id`` (every search response
carries one) and, for clicks and impressions, the document by
``event_attributes.object.object_id``; ``event_attributes.position.ordinal``
is its 1-based rank as shown. Field names are UBI's (``ubi_events``:
``action_name``, ``client_id``, ``query_id``, ``timestamp``, ``message``,
``event_attributes.{object, position, session_id}``), so an export loads into
the ``ubi_events`` index that OpenSearch Dashboards and the Search Relevance
Workbench read.

Each event gets an ``event_id``: the client's, or a hash of its content, so a
batch retried after a lost answer is counted once (the consumer skips ids it
has seen). Two truly identical events (same query, action, document, position
and timestamp to the millisecond) therefore count once; send ``event_id`` to
tell them apart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError, field_validator

# The actions the experiment analysis reads; any other action_name is counted per arm as a custom action.
CLICK, IMPRESSION, DWELL = "click", "impression", "dwell"
MAX_ID = 256


class EventObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    object_id: StrictStr = Field(min_length=1, max_length=MAX_ID, description="The document's id (a hit's id).")
    object_id_field: StrictStr | None = Field(default=None, max_length=100, description="Which field object_id is "
                                              "(cascade's hits: _id).")


class EventPosition(BaseModel):
    model_config = ConfigDict(extra="allow")

    ordinal: StrictInt | None = Field(default=None, ge=1, le=100_000, description="1-based rank as shown.")


class EventAttributes(BaseModel):
    model_config = ConfigDict(extra="allow")

    object: EventObject | None = None
    position: EventPosition | None = None
    session_id: StrictStr | None = Field(default=None, max_length=MAX_ID)
    dwell_time: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=86_400 * 7, allow_inf_nan=False,
                                                       description="dwell: seconds spent on the document.")


class Event(BaseModel):
    """One UBI event (``ubi_events`` field names)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "action_name": "click", "query_id": "5f0c…", "client_id": "browser-17", "timestamp": "2026-12-02T10:00:00.000Z",
        "event_attributes": {"object": {"object_id": "4983", "object_id_field": "_id"}, "position": {"ordinal": 2}}}]})

    action_name: StrictStr = Field(min_length=1, max_length=100, description="click, impression, dwell, or any "
                                                                              "custom action (counted per arm).")
    query_id: StrictStr = Field(min_length=1, max_length=MAX_ID, description="The query_id of the search response.")
    client_id: StrictStr | None = Field(default=None, max_length=MAX_ID)
    user_id: StrictStr | None = Field(default=None, max_length=MAX_ID)
    timestamp: StrictStr | StrictInt | StrictFloat | None = Field(
        default=None, description="ISO 8601 or epoch milliseconds (default: when the service received it).")
    message_type: StrictStr | None = Field(default=None, max_length=100)
    message: StrictStr | None = Field(default=None, max_length=1024)
    event_id: StrictStr | None = Field(default=None, min_length=1, max_length=MAX_ID,
                                       description="Your id for this event; retries with the same id count once.")
    event_attributes: EventAttributes = Field(default_factory=EventAttributes)

    @field_validator("action_name")
    @classmethod
    def _action(cls, v: str) -> str:
        return v.strip().lower()

    @field_validator("timestamp")
    @classmethod
    def _time(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, (int, float)):
            if not (0 <= v <= 32503680000000):  # year 3000 in milliseconds
                raise ValueError("epoch milliseconds out of range")
            return v
        try:
            dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("not an ISO 8601 time (e.g. 2026-12-02T10:00:00.000Z) or epoch milliseconds") from None
        return v

    def check(self) -> tuple[str, str] | None:
        """Rules across fields: (field, message) of the first one broken, or None."""
        obj = self.event_attributes.object
        if self.action_name in (CLICK, IMPRESSION, DWELL) and obj is None:
            return "event_attributes.object.object_id", f"required for {self.action_name} events (the document's id)"
        if self.action_name == DWELL and self.event_attributes.dwell_time is None:
            return "event_attributes.dwell_time", "required for dwell events (seconds on the document)"
        return None


class EventBatch(BaseModel):
    """A batch of events (the body may also be a bare JSON array of them)."""

    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, description="At most CASCADE_EVENTS_MAX_BATCH events.")


def timestamp_iso(value: Any, received: dt.datetime) -> str:
    """The event time as UBI's strict_date_time (ISO 8601, milliseconds, UTC)."""
    if value is None:
        t = received
    elif isinstance(value, (int, float)):
        t = dt.datetime.fromtimestamp(value / 1000.0, tz=dt.timezone.utc)
    else:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        t = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(ev: Event, received: dt.datetime) -> dict[str, Any]:
    """The stored form: the event as sent (UBI fields), its time normalized, and its ``event_id``."""
    data = ev.model_dump(mode="json", exclude_none=True)
    data["timestamp"] = timestamp_iso(ev.timestamp, received)
    if not ev.event_id:
        obj = ev.event_attributes.object
        pos = ev.event_attributes.position
        key = [ev.query_id, ev.action_name, obj.object_id if obj else None, pos.ordinal if pos else None,
               data["timestamp"] if ev.timestamp is not None else None, ev.client_id, ev.message,
               ev.event_attributes.dwell_time]
        if ev.timestamp is None:  # no time of its own: a retry cannot be recognized, so every post counts
            key.append(received.isoformat())
        digest = hashlib.blake2b(json.dumps(key, default=str).encode("utf-8", "surrogatepass"), digest_size=12)
        data["event_id"] = "h" + digest.hexdigest()
    return data


def parse_batch(body: Any, max_events: int) -> tuple[list[tuple[int, Event]], list[dict[str, Any]]]:
    """Valid events with their index in the batch, and one error per invalid event (field names its path).

    ``body`` is a JSON array of events or ``{"events": [...]}``; a body that is neither is one error at
    ``body`` (nothing accepted).
    """
    from cascade.text import lone_surrogate

    events = body.get("events") if isinstance(body, dict) and set(body) == {"events"} else body
    if not isinstance(events, list):
        raise BatchError("body", 'expected a JSON array of events or {"events": [...]}')
    if not events:
        raise BatchError("events", "the batch is empty")
    if len(events) > max_events:
        raise BatchError("events", f"{len(events)} events in one batch; the limit is {max_events} "
                                   f"(CASCADE_EVENTS_MAX_BATCH): send several batches", limit=max_events)
    good: list[tuple[int, Event]] = []
    bad: list[dict[str, Any]] = []
    for i, raw in enumerate(events):
        where = f"events.{i}"
        if not isinstance(raw, dict):
            bad.append({"index": i, "field": where, "message": "expected an event object", "type": "invalid"})
            continue
        sur = lone_surrogate(raw)
        if sur:
            bad.append({"index": i, "field": f"{where}.{sur}", "message": "not valid Unicode text (a lone "
                                                                          "surrogate escape)", "type": "invalid_text"})
            continue
        try:
            ev = Event.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("str", "int", "float"))
            msg = "required" if err.get("type") == "missing" else err.get("msg", "invalid").removeprefix("Value error, ")
            bad.append({"index": i, "field": f"{where}.{loc}" if loc else where, "message": msg,
                        "type": err.get("type", "invalid")})
            continue
        rule = ev.check()
        if rule is not None:
            bad.append({"index": i, "field": f"{where}.{rule[0]}", "message": rule[1], "type": "invalid"})
            continue
        good.append((i, ev))
    return good, bad


class BatchError(ValueError):
    """The whole batch is unreadable (not a list, empty, too many events)."""

    def __init__(self, field: str, message: str, limit: int | None = None):
        self.field, self.message, self.limit = field, message, limit
        super().__init__(message)
