"""Process-wide settings read from the environment (``CASCADE_`` prefix).

Per-index behaviour lives in the cascade YAML files; these settings only say
where things are on this machine, so the same config works everywhere.

Values come from, in order of precedence: real ``CASCADE_*`` environment
variables, then ``.cascade/settings.env`` in the working directory (written by
``make`` from the shared data and models folders beside the checkout), then the defaults below.
The default folders are project-local (``.cascade/...`` relative to the
working directory), the same ones the Makefile used, so ``make demo`` and a
plain ``.venv/bin/cascade ...`` run from the checkout see the same indexes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# Relative to the working directory when Settings() is created (run commands from the checkout).
LOCAL_DIR = Path(".cascade")
ENV_FILE = LOCAL_DIR / "settings.env"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CASCADE_",
        env_file=ENV_FILE,  # real environment variables win over it
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path | None = Field(
        default=None,
        description="Folder of BEIR-format datasets (one sub-folder per dataset). "
        "Unset: public BEIR archives are downloaded into cache_dir/datasets.",
    )
    models_dir: Path | None = Field(
        default=None, description="Folder of local models; a model name is looked up here first."
    )
    index_dir: Path = Field(
        default=LOCAL_DIR / "indexes",
        description="Where the embedded backend persists its indexes (default: .cascade/indexes, relative to "
        "the working directory).",
    )
    trained_dir: Path = Field(
        default=LOCAL_DIR / "models",
        description="Where `cascade train` writes models; a stage's model name is looked up here too "
        "(default: .cascade/models, relative to the working directory).",
    )
    config_dir: Path = Field(
        default=Path("configs"),
        description="Folder of per-index cascade YAML files (NAME.yaml); built-in configs are the fallback.",
    )
    cache_dir: Path = Field(
        default=LOCAL_DIR / "cache",
        description="Downloads (default: .cascade/cache, relative to the working directory).",
    )
    beir_url: str = Field(
        default="https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets",
        description="Base URL of the public BEIR archives (NAME.zip).",
    )
    torch_threads: int | None = Field(default=None, description="torch intra-op threads (default: torch's own).")

    # The HTTP service (`cascade serve`).
    host: str = Field(default="127.0.0.1", description="Address `cascade serve` listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port `cascade serve` listens on.")
    redis_url: str | None = Field(
        default=None, description="Redis for cached results (redis://host:6379/0); unset: an in-process LRU."
    )
    redis_timeout_s: float = Field(
        default=0.1, gt=0, le=30,
        description="Connect, read and pool-wait timeout for Redis; a slower Redis is skipped, not waited for.",
    )
    redis_max_connections: int = Field(default=64, ge=1, le=10_000, description="Connections in the Redis pool.")
    redis_retry_s: float = Field(
        default=1.0, ge=0, le=3600, description="After a Redis failure, serve uncached this long before trying it again."
    )
    memory_cache_items: int = Field(
        default=10_000, ge=0, description="Entries in the in-process LRU used when no Redis URL is set."
    )
    admin_api_key: SecretStr | None = Field(
        default=None, description="Key for /v1/admin/* (header X-API-Key); unset: admin endpoints are off."
    )
    max_concurrent_searches: int = Field(
        default=4, ge=1, le=1024, description="Uncached searches computed at once; more wait in a queue."
    )
    max_queued_searches: int = Field(
        default=64, ge=0, le=100_000, description="Uncached searches allowed to wait; beyond that: 503 with Retry-After."
    )
    max_queue_wait_s: float = Field(
        default=2.0, gt=0, le=3600,
        description="An uncached search expected to wait longer than this for a slot (or than its own budget or "
                    "the search timeout) gets 503 with Retry-After at once instead of queueing.",
    )
    search_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="A request waits this long for its cascade.")
    max_request_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body accepted (413 above).")
    # Connection hygiene (`cascade serve`): a client may not hold a connection without sending a request.
    http_keepalive_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="An open connection with no request in progress (new, or between requests) is closed after this.",
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="A request's line and headers must arrive within this from its first byte (408 and close).",
    )
    http_body_timeout_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="A request's body must arrive within this after its headers (408 and close).",
    )
    http_max_header_bytes: int = Field(
        default=16_384, ge=1024, le=1 << 24,
        description="Largest request line plus headers accepted (431 and close above).",
    )
    # Experiments and events (Redis Streams; need CASCADE_REDIS_URL).
    events_enabled: bool = Field(
        default=True, description="With CASCADE_REDIS_URL: log searches and accept POST /v1/events into Redis "
                                  "Streams. false: experiments still assign arms, nothing is recorded.")
    events_consumer: bool = Field(
        default=True, description="Aggregate events in this process (a consumer-group member); false when "
                                  "`cascade experiments consume` runs elsewhere.")
    events_log_queries: Literal["experiments", "all"] = Field(
        default="experiments", description="Which searches are logged (ubi_queries): only those in an "
                                           "experiment, or all (events on unlogged searches count as orphans).")
    events_max_backlog: int = Field(
        default=100_000, ge=1, le=100_000_000,
        description="Events waiting to be aggregated beyond which POST /v1/events answers 503 + Retry-After.")
    events_retention: int = Field(
        default=1_000_000, ge=1000, le=1_000_000_000,
        description="Records kept in the stream (the raw log export-ubi reads); must exceed events_max_backlog.")
    events_max_batch: int = Field(default=1000, ge=1, le=100_000, description="Events in one POST /v1/events.")
    events_query_ttl_s: int = Field(
        default=7 * 86_400, ge=60, le=365 * 86_400,
        description="How long a search's record waits for its events (later events count as orphans).")
    events_snapshot_every: int = Field(
        default=50, ge=1, le=1_000_000, description="Experiments keep a snapshot of their counts (a look, for "
                                                    "always-valid p-values and plots) every this many impressions.")
    public_ops_endpoints: bool = Field(
        default=True,
        description="Serve /metrics, /docs, /redoc and /openapi.json without a key; false: they need "
                    "CASCADE_ADMIN_API_KEY (header X-API-Key) like /v1/admin/*.",
    )


    @model_validator(mode="after")
    def _events_fit(self) -> "Settings":
        if self.events_retention <= self.events_max_backlog:
            raise ValueError(f"CASCADE_EVENTS_RETENTION ({self.events_retention}) must exceed "
                             f"CASCADE_EVENTS_MAX_BACKLOG ({self.events_max_backlog}), or trimming the stream "
                             f"could drop events not yet aggregated")
        return self

    # The rerank APIs (cascade/service/rerank: Cohere, Jina, Voyage, TEI, vLLM shapes); docs/rerank.md.
    rerank_prefix: str = Field(
        default="", pattern=r"^(/[A-Za-z0-9._~-]+)*$",
        description="Also serve the rerank APIs under this path (e.g. /cascade); they are always served at the root.",
    )
    rerank_default_model: str | None = Field(
        default=None, description="INDEX, INDEX:PROFILE or an alias the rerank APIs use when a request names no "
        "model (TEI clients never do); unset: the one index whose default profile can rerank, if only one can.",
    )
    rerank_models: dict[str, str] = Field(
        default_factory=dict, description='Aliases a request\'s `model` may use, JSON: {"rerank-english-v3.0": '
        '"scifact:ce"} (for clients that insist on a model name of their own).',
    )
    rerank_api_keys: dict[str, SecretStr] = Field(
        default_factory=dict, description='Optional key per rerank route, JSON: {"/v2/rerank": "...", "*": "..."} '
        '(routes: /v1/rerank, /v2/rerank, /rerank (also /info), /score; "*": every route without its own). Sent '
        "as Authorization: Bearer KEY, a bare Authorization: KEY, or X-API-Key.",
    )
    rerank_max_request_bytes: int = Field(
        default=16 << 20, ge=1024, description="Largest rerank request body (413 in the API's own shape above); "
        "there is no cap on the number of documents.",
    )
    rerank_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="A rerank request waits this long for its ranking (504 after; "
        "the ranking goes on, and an identical retry joins it instead of starting over). 1,000 abstracts took "
        "80 s a request on 2 busy CPU cores (docs/benchmarks.md): raise it on a small or loaded machine.",
    )
    rerank_max_concurrent: int = Field(
        default=2, ge=1, le=256, description="Rerank requests computed at once, in a pool apart from the searches' "
        "(a 1,000-document request holds its slot as long as hundreds of searches).",
    )
    rerank_max_queued: int = Field(
        default=16, ge=0, le=10_000, description="Rerank requests allowed to wait for a slot; more, or one whose "
        "expected wait exceeds CASCADE_RERANK_TIMEOUT_S, get 429 + Retry-After at once.",
    )
    # The workbench (/ui; docs/workbench.md). Unset: beside CASCADE_INDEX_DIR (.cascade/judgments, .cascade/evals).
    judgments_dir: Path | None = Field(
        default=None,
        description="Judgments saved from the workbench: one BEIR folder per index (INDEX/queries.jsonl, "
        "INDEX/qrels/ui.tsv) that `cascade eval --dataset DIR/INDEX --split ui` reads.",
    )
    evals_dir: Path | None = Field(
        default=None,
        description="The last `cascade eval` of each index and profile (INDEX/PROFILE.json), which the workbench shows.",
    )

    @field_validator("rerank_api_keys")
    @classmethod
    def _known_routes(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        bad = sorted(set(v) - set(RERANK_KEY_ROUTES))
        if bad:
            raise ValueError(f"unknown route {bad[0]!r}; keys name one of {', '.join(RERANK_KEY_ROUTES)}")
        return v


RERANK_KEY_ROUTES = ("/v1/rerank", "/v2/rerank", "/rerank", "/score", "*")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
