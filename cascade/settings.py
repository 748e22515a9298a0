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

from pydantic import Field, SecretStr
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
    public_ops_endpoints: bool = Field(
        default=True,
        description="Serve /metrics, /docs, /redoc and /openapi.json without a key; false: they need "
                    "CASCADE_ADMIN_API_KEY (header X-API-Key) like /v1/admin/*.",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
