"""Request and response bodies of the HTTP API, as pydantic models so /openapi.json says exactly what is served.

Request models are strict (no "10" for 10, no true for 1) and forbid unknown
keys: a typo in a field name is an error that names the field, not a silently
ignored setting. Limits that depend on the index (``size``, query length,
which filters exist) are checked against its config after parsing; the bounds
here are the widest any config allows.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

MAX_WINDOW = 10_000  # the largest size, from, keep or rerank any config may declare
MAX_BUDGET_MS = 60_000  # the largest per-request latency budget (CASCADE_SEARCH_TIMEOUT_S cuts a search off anyway)

Scalar = StrictStr | StrictInt | StrictFloat


class RangeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    gt: Scalar | None = None
    gte: Scalar | None = None
    lt: Scalar | None = None
    lte: Scalar | None = None


FilterValue = Scalar | list[Scalar] | RangeSpec


class StepOverride(BaseModel):
    """Lower a step's depth for one request; never above what the config declares."""

    model_config = ConfigDict(extra="forbid", strict=True)

    keep: StrictInt | None = Field(default=None, ge=1, le=MAX_WINDOW, description="Pass on at most N candidates.")
    rerank: StrictInt | None = Field(default=None, ge=1, le=MAX_WINDOW, description="Score only the top N incoming.")


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{"query": "solar power storage", "filters": {"year": {"gte": 2019}},
                                         "size": 10, "explain": False}]},
    )

    query: StrictStr = Field(min_length=1, description="Query text; the index's limits.max_query_chars applies.")
    filters: dict[str, FilterValue] = Field(
        default_factory=dict,
        description='By field: a value (term), a list (any of), or a range {"gte": 2010, "lt": 2020} on numbers and dates.',
    )
    size: StrictInt = Field(default=10, ge=1, le=MAX_WINDOW, description="Hits to return (at most the index's limits.max_size).")
    from_: StrictInt = Field(default=0, alias="from", ge=0, le=MAX_WINDOW, description="Offset of the first hit; from + size <= limits.max_size.")
    user_id: StrictStr | None = Field(default=None, max_length=256, description="Caller's user, for logs (not part of the cache key).")
    session_id: StrictStr | None = Field(default=None, max_length=256, description="Caller's session, for logs.")
    user_attributes: dict[Annotated[StrictStr, Field(min_length=1, max_length=64)],
                          Annotated[StrictStr, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=16,
        description='Attributes of the caller\'s user, e.g. {"segment": "clinician"}: personalized features read '
                    'the one their index names (features.personal.segment); logged with the search.')
    explain: StrictBool = Field(default=False, description="Add each step's trace and each hit's retriever and stage scores.")
    profile: StrictStr | None = Field(default=None, min_length=1, max_length=128,
                                      description="Rank profile to run (GET /v1/indexes/{index}/cascade lists them); "
                                                  "default: the index's default_profile.")
    overrides: dict[str, StepOverride] = Field(
        default_factory=dict,
        description='Per step ("fusion" or a stage name): lower keep or rerank for this request, at most the configured value.',
    )
    experiment: StrictStr | None = Field(default=None, min_length=1, max_length=64,
                                         description="QA, with `arm` and the admin key (X-API-Key): serve this "
                                                     "experiment's arm; such requests are never counted.")
    arm: StrictStr | None = Field(default=None, min_length=1, max_length=128,
                                  description="QA: the arm of `experiment` to serve (needs X-API-Key).")
    budget_ms: StrictFloat | None = Field(
        default=None, gt=0, le=MAX_BUDGET_MS, allow_inf_nan=False,
        description="Latency budget of this search in milliseconds: a stage whose estimated cost does not fit what "
                    "is left is shrunk to fewer candidates or skipped (the response's budget field says which). "
                    "The index's limits.budget_ms, when set, is a ceiling: the tighter of the two applies.",
    )


class RetrieverScore(BaseModel):
    score: float
    rank: int


class SearchHit(BaseModel):
    id: str
    score: float | None
    fields: dict[str, Any]
    retrievers: dict[str, RetrieverScore] | None = Field(default=None, description="explain: which retrievers found it, score and rank.")
    stages: dict[str, float | None] | None = Field(default=None, description="explain: each stage's score (null: not scored).")
    features: dict[str, float | None] | None = Field(default=None, description="explain: the LTR feature vector.")
    arm: str | None = Field(default=None, description="Interleaved answers: the arm (rank profile) that placed "
                                                      "this hit; clicks on it credit that arm.")


class TraceTop(BaseModel):
    id: str
    score: float | None


class TraceStep(BaseModel):
    name: str
    kind: str = Field(description="retriever, fusion, features or the stage type.")
    n_in: int
    n_out: int
    scored: int = Field(description="Work this step did: candidates scored, in the stage's cost_unit.")
    cost_unit: str | None = Field(default=None, description="Stages: what scored counts (pairs, rows, calls, tokens).")
    usage: dict[str, int] | None = Field(default=None, description="Stages: other work metered besides scored, by "
                                         "unit (an LLM stage's prompt + completion tokens).")
    ms: float
    elapsed_ms: float
    top: list[TraceTop]
    error: str | None = Field(default=None, description="Why the step failed; the response was built without it.")
    note: str | None = Field(default=None, description="What else happened to the step (e.g. shrunk to fit a budget).")


class BudgetReport(BaseModel):
    ms: float = Field(description="The budget this search ran under: the tighter of budget_ms and limits.budget_ms.")
    source: Literal["request", "index"] = Field(description="Where it came from: the request's budget_ms or the "
                                                            "index's limits.budget_ms.")
    skipped: list[str] = Field(description="Stages skipped to fit the budget (the previous order was kept).")
    shrunk: dict[str, int] = Field(description="Stages that scored fewer candidates to fit the budget: name -> "
                                               "candidates scored (the unscored rest follows in the previous order).")


class ExperimentInfo(BaseModel):
    id: str
    mode: Literal["ab", "interleave", "multileave"]
    arms: list[str]
    arm: str | None = Field(default=None, description="ab: the arm this user is in (the profile that ranked).")
    forced: bool | None = Field(default=None, description="An admin forced the arm: not counted.")


class SearchResponse(BaseModel):
    index: str
    profile: str = Field(description="The rank profile that ranked this answer (interleaved: the arms joined "
                                     "by '+').")
    query_id: str = Field(description="Send events about this answer (clicks, impressions, dwell) with it: "
                                      "POST /v1/events.")
    experiment: ExperimentInfo | None = Field(default=None, description="Present when the search was in an "
                                              "experiment of the index.")
    config_version: str
    hits: list[SearchHit]
    total: int = Field(description="Candidates left after the last step (what from/size page through).")
    degraded: list[str] = Field(description="Steps that failed; the ranking was built without them.")
    cache: Literal["hit", "miss"]
    request_id: str
    took_ms: float
    budget: BudgetReport | None = Field(default=None, description="Present when a latency budget applied (the "
                                        "request's budget_ms or the index's limits.budget_ms): what it cut.")
    trace: list[TraceStep] | None = Field(default=None, description="explain: every step in order.")
    arm_traces: dict[str, list[TraceStep]] | None = Field(default=None, description="explain on an interleaved "
                                                          "answer: each arm's own trace.")


class ErrorDetail(BaseModel):
    field: str | None = Field(description="The request part at fault: query, size, from, filters.year, overrides.ltr.keep, index...")
    message: str
    type: str
    limit: int | None = None
    file: str | None = Field(default=None, description="Config errors: the file at fault.")
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class CacheInfo(BaseModel):
    enabled: bool
    ttl_s: int
    pair_scores: bool


class IndexInfo(BaseModel):
    name: str
    version: str
    description: str
    status: Literal["loading", "ready", "unavailable"]
    error: str | None = None
    backend: str
    steps: list[str] = Field(description="Steps of the default profile.")
    profiles: list[str] = Field(default_factory=list, description="Rank profiles a request may name.")
    default_profile: str = "default"
    cache: CacheInfo


class IndexList(BaseModel):
    generation: int = Field(description="Increases with every successful reload.")
    indexes: list[IndexInfo]


class StepBounds(BaseModel):
    keep: int | None = Field(description="Largest keep an override may ask for.")
    rerank: int | None = Field(description="Largest rerank an override may ask for (null: the step has none).")


class ProfileInfo(BaseModel):
    fingerprint: str | None = Field(description="Hash of the profile, its model stamps and the built index: part of cache keys.")
    plan: list[dict[str, Any]] = Field(description="The profile's cascade as built (what explain mirrors).")
    overrides: dict[str, StepBounds]


class CascadeInfo(BaseModel):
    index: str
    version: str
    status: Literal["loading", "ready", "unavailable"]
    error: str | None = None
    fingerprint: str | None = Field(description="Hash of the config, the models and the built index: part of cache keys.")
    config: dict[str, Any] = Field(description="The effective config, defaults filled in.")
    default_profile: str = "default"
    plan: list[dict[str, Any]] | None = Field(description="The default profile's cascade as built (what explain mirrors).")
    overrides: dict[str, StepBounds]
    profiles: dict[str, ProfileInfo] = Field(default_factory=dict, description="Every rank profile as built.")


class ReloadResponse(BaseModel):
    generation: int
    indexes: list[IndexInfo]


class Health(BaseModel):
    status: Literal["ok"]


class IndexReadiness(BaseModel):
    status: Literal["loading", "ready", "unavailable"]
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "loading", "unavailable"]
    indexes: dict[str, IndexReadiness]
    cache: dict[str, Any]


class EventError(BaseModel):
    index: int = Field(description="Position of the event in the batch.")
    field: str = Field(description="events.N.path of the field at fault.")
    message: str
    type: str


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events stored (durably, in Redis) before this answer was sent.")
    event_ids: list[str] = Field(description="Their ids, in batch order (yours, or a hash of the event): a retry "
                                             "with the same ids is counted once.")


class EventsRejected(BaseModel):
    error: ErrorDetail = Field(description="The first invalid event.")
    accepted: int = Field(description="Valid events of the batch, stored anyway.")
    event_ids: list[str]
    rejected: list[EventError] = Field(description="Every invalid event, with the field at fault.")


class ExperimentSummary(BaseModel):
    id: str
    index: str
    mode: Literal["ab", "interleave", "multileave"]
    arms: list[str]
    status: Literal["scheduled", "running", "stopped"]
    traffic: float
    sample_size: int | None = None
    description: str = ""


class ExperimentList(BaseModel):
    experiments: list[ExperimentSummary]
