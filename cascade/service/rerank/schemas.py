"""Request and response bodies of the rerank APIs, as their clients send and read them.

Requests ignore keys they do not know (real clients send ``priority``, ``max_chunks_per_doc`` or a
``model`` to TEI, and the servers they were written for ignore them); every key that is read is typed
strictly (no "5" for 5), and a wrong one is a 4xx naming it. A key cascade knows but cannot honour is
refused with a 4xx naming it, never accepted and ignored. Request bodies are flat (no ``$defs``) so the
OpenAPI spec can carry them inline.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Document = str | dict[str, Any]
DOCUMENTS = ("A document is a string, or an object: the profile's fields (`title`, `text`) are read, else `text` "
             "(with `rank_fields`: those keys, in order); other keys are not read and are echoed back as sent. "
             "For a multimodal profile, `image` holds a URL or base64 data.")


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # "5" is not 5, "yes" not true: as the search API


class V1RerankRequest(_Request):
    """Cohere v1, Jina and Voyage: one shape with each API's own names (top_n or top_k)."""

    model: str | None = Field(default=None, description="INDEX or INDEX:PROFILE (or an alias); unset: the default.")
    query: str
    documents: list[Document] = Field(description=DOCUMENTS)
    top_n: int | None = Field(default=None, ge=1, description="Cohere, Jina: return the best N (all by default).")
    top_k: int | None = Field(default=None, ge=1, description="Voyage: return the best K (all by default).")
    rank_fields: list[str] | None = Field(default=None, description="Cohere: the object keys to rank on.")
    return_documents: bool | None = Field(default=None, description="Echo each document (default: yes, except for "
                                          "Voyage-style requests, which send `truncation` or `top_k`).")
    truncation: bool | None = Field(default=None, description="Voyage: accepted; cascade always truncates and "
                                    "reports it (X-Cascade-Truncated).")


class V2RerankRequest(_Request):
    """Cohere v2."""

    model: str | None = Field(default=None, description="INDEX or INDEX:PROFILE (or an alias); unset: the default.")
    query: str
    documents: list[Document] = Field(description=DOCUMENTS)
    top_n: int | None = Field(default=None, ge=1)
    max_tokens_per_doc: int | None = Field(default=None, ge=1, description="Cut each document to this many tokens "
                                           "first (the model's own limit applies too); reported in meta.warnings.")
    rank_fields: list[str] | None = None
    return_documents: bool = False


class TEIRerankRequest(_Request):
    """text-embeddings-inference ``POST /rerank``."""

    query: str
    texts: list[str]
    truncate: bool = Field(default=False, description="Accepted either way: cascade truncates over-long texts "
                           "instead of failing the request, and reports how many (X-Cascade-Truncated).")
    truncation_direction: Literal["Left", "Right", "left", "right"] = Field(
        default="Right", description="Right: a long text keeps its start; Left: its end (cut before ranking, "
        "counted in X-Cascade-Truncated).")
    raw_scores: bool = Field(default=False, description="The profile's raw score instead of a (0, 1) relevance.")
    return_text: bool = False
    model: str | None = Field(default=None, description="Not TEI's: INDEX or INDEX:PROFILE; unset: the default.")


class ScoreRequest(_Request):
    """vLLM ``POST /score``: ``text_1``/``text_2`` or ``queries``/``documents`` (one query to many documents,
    or pairwise lists of one length)."""

    model: str | None = None
    text_1: str | list[str] | None = None
    text_2: str | list[str] | None = None
    queries: str | list[str] | None = None
    documents: str | list[str] | None = None
    truncate_prompt_tokens: int | None = Field(default=None, description="Not supported (400 when set): vLLM keeps "
                                               "the last N tokens of the whole prompt; cascade cuts each document "
                                               "(never the query) to what the model reads, and counts it in "
                                               "X-Cascade-Truncated.")


# ---------------------------------------------------------------------------------------------- responses


class _Result(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


class _VoyageResult(BaseModel):
    index: int
    relevance_score: float
    document: str | None = None


class V1RerankResponse(BaseModel):
    id: str
    results: list[_Result]
    data: list[_VoyageResult] = Field(description="The same ranking in Voyage's shape.")
    model: str
    object: Literal["list"] = "list"
    usage: dict[str, int]
    meta: dict[str, Any]


class V2RerankResponse(BaseModel):
    id: str
    results: list[_Result]
    meta: dict[str, Any]


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class TEIInfo(BaseModel):
    """TEI's ``/info``, filled for the default model (what TEI clients read to size their batches)."""

    model_id: str = Field(description="The default model's INDEX:PROFILE name (or how to set one).")
    model_sha: str | None = None
    model_dtype: str
    model_type: dict[str, Any] = Field(description="Always a reranker, as TEI describes one.")
    max_concurrent_requests: int = Field(description="Rerank requests running and waiting at once.")
    max_input_length: int = Field(description="Tokens the first cross-encoder reads per pair.")
    max_batch_tokens: int
    max_batch_requests: int | None = None
    max_client_batch_size: int = Field(description="No document cap: what the body limit allows.")
    auto_truncate: bool = Field(description="Always true: long texts are cut and counted, never refused.")
    tokenization_workers: int
    version: str = Field(description="cascade's version.")
    sha: str | None = None
    docker_label: str | None = None


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: dict[str, Any]


# Error bodies: each API's own.


class CohereError(BaseModel):
    message: str


class SharedV1Error(BaseModel):
    """/v1/rerank serves Cohere v1 (reads `message`), Jina and Voyage (FastAPI's `detail`): both are sent."""

    message: str
    detail: str


class TEIError(BaseModel):
    error: str
    error_type: str


class _OpenAIErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ScoreError(BaseModel):
    error: _OpenAIErrorInfo
