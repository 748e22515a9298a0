"""Remote endpoints: the one config type for anything a stage calls over HTTP.

A rerank API, an LLM server or any later remote model is reached the same
way: a URL, an API key read from an environment variable (never the key
itself), a per-request timeout and bounded retries. Stages embed this block
(``remote:``) and connectors take it, not the stage's own config, so
``connectors/`` never needs to know which stage is calling.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade.errors import CascadeError


class RemoteEndpoint(BaseModel):
    """Where a remote model lives and how patiently to call it."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="The API's base URL (its usual path is added) or a full endpoint URL.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="Per request; never longer than the "
                             "search's remaining budget.")
    retries: int = Field(default=2, ge=0, le=10, description="Retries after 429, 5xx or a refused connection.")
    backoff_s: float = Field(default=0.2, ge=0, le=60, description="First retry delay; doubles each time.")
    max_concurrency: int = Field(default=4, ge=1, le=256, description="Requests in flight at once from this stage.")

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("api_key: never put secrets in the config; set api_key_env to the name of an "
                             "environment variable that holds it")
        return data

    def api_key(self, who: str) -> str | None:
        """The key from the environment; a named but unset variable is an error naming both."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise CascadeError(f"{who}: api_key_env names {self.api_key_env}, which is not set in the environment")
        return key


# Keys a stage config may still write at its top level (the flat form before `remote:` existed).
FLAT_KEYS = ("url", "api_key_env", "timeout_s", "retries", "backoff_s")


def fold_flat_keys(data: Any) -> Any:
    """``{url: ..., timeout_s: 5}`` on a stage means ``remote: {url: ..., timeout_s: 5}``."""
    if not isinstance(data, dict) or not any(k in data for k in FLAT_KEYS):
        return data
    if "api_key" in data:
        raise ValueError("api_key: never put secrets in the config; set api_key_env to the name of an "
                         "environment variable that holds it")
    flat = {k: data[k] for k in FLAT_KEYS if k in data}
    rest = {k: v for k, v in data.items() if k not in FLAT_KEYS}
    remote = rest.get("remote")
    if isinstance(remote, dict):
        clash = sorted(set(flat) & set(remote))
        if clash:
            raise ValueError(f"{clash[0]}: given both at the top level and under remote; keep one")
        rest["remote"] = {**remote, **flat}
    elif remote is None:
        rest["remote"] = flat
    return rest
