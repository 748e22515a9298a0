"""Request and response bodies of the workbench's endpoints (strict, unknown keys refused, like search's)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from cascade.service.schemas import MAX_BUDGET_MS, FilterValue, RetrieverScore, StepOverride

MAX_DEPTH = 200  # documents per column; the index's limits.max_size applies too
RBO_P = 0.9  # RBO's persistence: about 86% of the weight on the first 10 ranks (cascade.ui.overlap)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StepsRequest(_Strict):
    query: StrictStr = Field(min_length=1, description="Query text; the index's limits.max_query_chars applies.")
    filters: dict[str, FilterValue] = Field(default_factory=dict, description="As in search.")
    profile: StrictStr | None = Field(default=None, min_length=1, max_length=128,
                                      description="Rank profile (default: the index's default_profile).")
    overrides: dict[str, StepOverride] = Field(default_factory=dict, description="As in search: lower keep or "
                                               "rerank of a step for this request.")
    depth: StrictInt = Field(default=20, ge=1, le=MAX_DEPTH, description="Documents listed per step (at most the "
                                                                         "index's limits.max_size).")
    budget_ms: StrictFloat | None = Field(default=None, gt=0, le=MAX_BUDGET_MS, allow_inf_nan=False,
                                          description="A latency budget, as in search: the trace says what it cut.")


class CompareRequest(_Strict):
    query: StrictStr = Field(min_length=1)
    filters: dict[str, FilterValue] = Field(default_factory=dict)
    a: StrictStr = Field(min_length=1, max_length=128, description="First rank profile (an experiment's arm is "
                                                                   "one of the index's profiles).")
    b: StrictStr = Field(min_length=1, max_length=128, description="Second rank profile.")
    k: StrictInt = Field(default=10, ge=1, le=MAX_DEPTH, description="Depth of overlap, Jaccard and RBO (at most "
                                                                     "depth).")
    depth: StrictInt = Field(default=20, ge=1, le=MAX_DEPTH, description="Documents listed per side (>= k).")


class JudgmentPut(_Strict):
    query: StrictStr = Field(min_length=1, max_length=2048, description="The query text, as searched.")
    doc_id: StrictStr = Field(min_length=1, max_length=512)
    grade: StrictInt | None = Field(ge=0, le=4, description="0 not relevant, 1 related, 2 highly relevant, "
                                                            "3 perfect (4 is kept for imported scales); null "
                                                            "removes the judgment.")


# ---------------------------------------------------------------- answers


class StepHit(BaseModel):
    id: str
    rank: int
    score: float | None
    previous_rank: int | None = Field(description="Rank in the previous ranking step (null: first steps, or "
                                                  "the document was not there).")
    move: int | None = Field(description="previous_rank - rank: > 0 moved up.")
    new: bool = Field(description="Not in the previous step's listed top (entered it here).")
    scored: bool = Field(description="This step scored the document (false: it kept the previous order, below "
                                     "the scored window).")


class StepDrop(BaseModel):
    id: str
    previous_rank: int
    rank: int | None = Field(description="Where it went (beyond the listed depth), or null: cut by keep.")


class StepColumn(BaseModel):
    name: str
    kind: str
    ranked: bool = Field(description="The step ranks documents (features only compute, so they have no list).")
    previous: str | None = Field(description="The ranking step moves are counted from.")
    n_in: int
    n_out: int
    scored: int
    cost_unit: str | None = None
    usage: dict[str, int] | None = None
    ms: float
    elapsed_ms: float
    error: str | None = None
    note: str | None = None
    early_exit: dict[str, Any] | None = None
    total: int = Field(description="Length of the step's whole ranking.")
    hits: list[StepHit]
    dropped: list[StepDrop]


class StepRank(BaseModel):
    rank: int
    score: float | None


class StepDoc(BaseModel):
    fields: dict[str, Any]
    retrievers: dict[str, RetrieverScore]
    steps: dict[str, StepRank] = Field(description="Rank and score at every ranking step that kept it.")
    stages: dict[str, float | None] | None = Field(description="Each stage's own score before any combine "
                                                              "(documents that reached the last step).")
    features: dict[str, float | None] | None
    label: int | None
    label_source: str | None = Field(description="ui, or the dataset split the label comes from.")


class QueryJudgments(BaseModel):
    query_id: str | None
    judged: int = Field(description="Documents judged for this query.")
    relevant: int = Field(description="Judged documents with a grade above 0.")


class StepsResponse(BaseModel):
    index: str
    profile: str
    query: str
    config_version: str
    took_ms: float
    depth: int
    degraded: list[str]
    steps: list[StepColumn]
    docs: dict[str, StepDoc]
    judgments: QueryJudgments


class RankedId(BaseModel):
    id: str
    rank: int
    score: float | None


class CompareSide(BaseModel):
    profile: str
    took_ms: float
    total: int
    hits: list[RankedId] = Field(description="Its ranking, to the listed depth.")
    ndcg_10: float | None = Field(description="nDCG@10 when the query has relevant judgments.")
    judged_10: int = Field(description="Judged documents among its top 10.")
    degraded: list[str]


class CompareRow(BaseModel):
    id: str
    rank_a: int | None
    rank_b: int | None
    diff: int | None = Field(description="rank_a - rank_b: > 0 ranks higher in b.")
    label: int | None


class CompareDoc(BaseModel):
    fields: dict[str, Any] = Field(description="Stored fields, long values cut for display.")
    label: int | None
    label_source: str | None = Field(description="ui, or the dataset split the label comes from.")


class CompareResponse(BaseModel):
    index: str
    query: str
    k: int
    overlap: int = Field(description="Documents the two top k share.")
    jaccard: float = Field(description="Jaccard of the two top k.")
    rbo: float = Field(description="Rank-biased overlap of the two top k: RBO_ext, the extrapolated point "
                                   "estimate of Webber et al. (2010, eq. 32; lists of uneven length too), not "
                                   "the lower bound RBO_min.")
    rbo_p: float = Field(description="RBO's persistence p.")
    a: CompareSide
    b: CompareSide
    rows: list[CompareRow] = Field(description="Every listed document, by its better rank.")
    docs: dict[str, CompareDoc] = Field(description="Each listed document's fields and label.")
    judgments: QueryJudgments


class LabelsResponse(BaseModel):
    index: str
    query: str
    query_id: str | None
    labels: dict[str, int]
    sources: dict[str, str]


class JudgedQuery(BaseModel):
    query_id: str
    query: str
    judged: int
    relevant: int
    source: str = Field(description="ui, or the dataset split.")


class JudgedQueries(BaseModel):
    index: str
    ui_judgments: int = Field(description="Judgments saved from the workbench for this index.")
    folder: str = Field(description="Where they are, relative to the judgments folder (CASCADE_JUDGMENTS_DIR).")
    queries: list[JudgedQuery]


class ImportResult(BaseModel):
    index: str
    imported: int
    ui_judgments: int


class EvalList(BaseModel):
    index: str
    config_version: str = Field(description="The index's config version now (an eval of another is stale).")
    evals: list[dict[str, Any]] = Field(description="The last `cascade eval` of each profile, newest first: "
                                                    "the report's JSON (stages with nDCG@10, recall, latency, "
                                                    "cost), saved_at and the command.")


ExportFormat = Literal["jsonl", "tsv"]
