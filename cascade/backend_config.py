"""Backend blocks of an index config: the embedded index, or an OpenSearch cluster (secrets by environment variable)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddedBackendConfig(_Strict):
    type: Literal["embedded"] = "embedded"


class AwsSigV4Config(_Strict):
    region: str = Field(description="AWS region of the domain or collection, e.g. eu-west-1.")
    service: Literal["es", "aoss"] = Field(default="es", description="es: OpenSearch Service; aoss: Serverless.")


class OpenSearchBackendConfig(_Strict):
    """An existing OpenSearch cluster. Secrets are named by environment variable, never written here."""

    type: Literal["opensearch"] = "opensearch"
    hosts: list[str] = Field(default_factory=lambda: ["http://localhost:9200"], min_length=1)
    index: str | None = Field(default=None, description="Index (or alias) in the cluster; default: the cascade index name.")
    username: str | None = None
    password_env: str | None = Field(default=None, description="Environment variable holding the password.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding an API key.")
    aws: AwsSigV4Config | None = Field(default=None, description="Sign requests with AWS SigV4 (needs boto3).")
    verify_certs: bool = True
    ca_certs: str | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries on 429 and 5xx answers, with backoff.")
    retry_backoff_s: float = Field(default=0.5, ge=0, le=60, description="First backoff; doubles on each retry.")
    field_map: dict[str, str] = Field(default_factory=dict, description="Cascade field -> index field (default: same name).")
    knn_field: str = Field(default="embedding", description="The knn_vector field.")
    multi_match_type: Literal["best_fields", "most_fields"] = Field(
        default="most_fields", description="most_fields sums per-field BM25 like the embedded backend."
    )
    mode: Literal["knn", "neural"] = Field(default="knn", description="neural: the cluster embeds the query (model_id).")
    model_id: str | None = Field(default=None, description="ML Commons model id for mode: neural.")
    hybrid_pipeline: str | None = Field(default=None, description="Search pipeline for a native hybrid query.")
    engine: Literal["lucene", "faiss"] = Field(default="lucene", description="knn_vector engine for `cascade index`.")
    shards: int | None = Field(default=None, ge=1, description="Primary shards for `cascade index` (default: the cluster's).")
    replicas: int | None = Field(default=None, ge=0, description="Replicas for `cascade index` (default: the cluster's).")
    stats_ttl_s: float = Field(default=300.0, ge=0, description="How long index statistics are cached.")

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("password", "api_key"):
                if key in data:
                    raise ValueError(f"{key}: never put secrets in the config; set {key}_env to the name of an "
                                     f"environment variable that holds it")
            if isinstance(data.get("hosts"), str):
                data = {**data, "hosts": [data["hosts"]]}
        return data

    @model_validator(mode="after")
    def _auth_and_mode(self) -> "OpenSearchBackendConfig":
        if (self.username is None) != (self.password_env is None):
            raise ValueError("username and password_env go together (basic auth)")
        schemes = [n for n, on in (("username", self.username), ("api_key_env", self.api_key_env), ("aws", self.aws)) if on]
        if len(schemes) > 1:
            raise ValueError(f"choose one way to authenticate; got {', '.join(schemes)}")
        if self.mode == "neural" and not self.model_id:
            raise ValueError("mode: neural needs model_id (the ML Commons model that embeds the query)")
        return self

    def index_name(self, cascade_index: str) -> str:
        return self.index or cascade_index

    def field(self, name: str) -> str:
        return self.field_map.get(name, name)
