"""Per-index cascade configuration: one YAML file per index, validated at start-up.

A config reads like a Vespa rank profile: the retrievers, how they are fused,
then the phases in order with how many hits each one re-ranks and keeps.
Validation errors name the file, the key path and the reason, so a bad file
never gets as far as serving traffic.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cascade.errors import ConfigError
from features.config import FeatureSetConfig
from cascade.stages import STAGE_CONFIGS

BUILTIN_CONFIG_DIR = Path(__file__).parent / "configs"


def tagged_union(types: tuple[type, ...] | list[type], tag: str) -> Any:
    """A pydantic discriminated union; with a single member, that member (pydantic needs two for a tag)."""
    types = tuple(types)
    if len(types) == 1:
        return types[0]
    return Annotated[Union[types], Field(discriminator=tag)]  # type: ignore[valid-type]


def infer_tags(data: Any) -> Any:
    """``fusion: {k: 60}`` means RRF, and a retriever named bm25 or knn is of that type unless it says."""
    if isinstance(data, dict):
        data = dict(data)
        if isinstance(data.get("fusion"), dict) and "method" not in data["fusion"]:
            data["fusion"] = {"method": "rrf", **data["fusion"]}
        if isinstance(data.get("retrievers"), dict):
            data["retrievers"] = {
                n: ({"type": n, **r} if isinstance(r, dict) and "type" not in r and n in ("bm25", "knn") else r)
                for n, r in data["retrievers"].items()
            }
    return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldConfig(_Strict):
    """One document field: how it is read from a corpus record and what the backend does with it."""

    type: Literal["text", "keyword", "integer", "float", "date"]
    source: str | None = Field(
        default=None, description="Dotted path in the corpus record (default: the field name), e.g. metadata.year."
    )
    analyzer: Literal["english", "standard"] = Field(
        default="english", description="text fields: english = lowercase, stop words, Snowball stemming."
    )


class EmbedderConfig(_Strict):
    model: str = Field(default="default", description="'default' (all-MiniLM-L6-v2), a local path or a hub name.")
    fields: list[str] = Field(default_factory=lambda: ["title", "text"], description="Fields joined into the text.")
    batch_size: int = Field(default=64, ge=1, le=4096)
    max_length: int | None = Field(default=None, ge=8, le=8192, description="Token limit (default: the model's).")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="auto: bfloat16 on CPUs with native bf16 (AMX/AVX-512 BF16), else float32."
    )


class BM25Config(_Strict):
    type: Literal["bm25"] = "bm25"
    k: int = Field(default=100, ge=1, le=10_000)
    fields: dict[str, float] | None = Field(
        default=None, description="Text fields and their boosts (default: every text field, boost 1)."
    )


class KnnConfig(_Strict):
    type: Literal["knn"] = "knn"
    k: int = Field(default=100, ge=1, le=10_000)
    exact_max_docs: int = Field(
        default=50_000, ge=0, description="Exact search up to this many documents, HNSW above."
    )
    ef_search: int = Field(default=128, ge=1)


RetrieverConfig = tagged_union((BM25Config, KnnConfig), "type")


class RRFConfig(_Strict):
    method: Literal["rrf"] = "rrf"
    k: int = Field(default=60, ge=0)
    weights: dict[str, float] = Field(default_factory=dict, description="Per retriever (default 1).")
    keep: int = Field(default=100, ge=1, le=10_000)


class LinearConfig(_Strict):
    method: Literal["linear"] = "linear"
    normalize: Literal["minmax", "zscore"] = "minmax"
    weights: dict[str, float] = Field(default_factory=dict, description="Per retriever (default 1).")
    keep: int = Field(default=100, ge=1, le=10_000)


FusionConfig = tagged_union((RRFConfig, LinearConfig), "method")


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


BackendConfig = tagged_union((EmbeddedBackendConfig, OpenSearchBackendConfig), "type")


class Limits(_Strict):
    max_size: int = Field(default=100, ge=1, le=10_000)
    max_query_chars: int = Field(default=2048, ge=1)
    budget_ms: float | None = Field(default=None, gt=0, description="Default latency budget of a search: stages "
                                    "that cannot fit in what is left are shrunk or skipped (noted in the trace).")


class CacheConfig(_Strict):
    """How the service caches this index's answers (Redis, or an in-process LRU without CASCADE_REDIS_URL)."""

    enabled: bool = Field(default=True, description="Cache final results of searches that did not degrade.")
    ttl_s: int = Field(default=300, ge=1, le=30 * 86_400, description="Lifetime of a cached result.")
    pair_scores: bool = Field(
        default=False, description="Also cache cross-encoder scores per (query, document text) across searches."
    )
    pair_scores_ttl_s: int = Field(default=86_400, ge=1, le=30 * 86_400, description="Lifetime of a cached pair score.")


StageConfig = tagged_union(STAGE_CONFIGS, "type")


class IndexConfig(_Strict):
    """The cascade for one index."""

    index: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Index name (lowercase, like OpenSearch).")
    version: str = Field(default="1", description="Bump when behaviour changes; part of cache keys.")
    description: str = ""
    backend: BackendConfig = Field(default_factory=EmbeddedBackendConfig)
    fields: dict[str, FieldConfig] = Field(
        default_factory=lambda: {"title": FieldConfig(type="text"), "text": FieldConfig(type="text")}
    )
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    retrievers: dict[str, RetrieverConfig] = Field(
        default_factory=lambda: {"bm25": BM25Config(), "knn": KnnConfig()}
    )
    fusion: FusionConfig = Field(default_factory=RRFConfig)
    features: FeatureSetConfig | None = Field(default=None, description="Learning-to-rank features (see docs/config.md).")
    stages: list[StageConfig] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @model_validator(mode="before")
    @classmethod
    def _infer_tags(cls, data: Any) -> Any:
        return infer_tags(data)

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _cross_checks(self) -> "IndexConfig":
        text_fields = {n for n, f in self.fields.items() if f.type == "text"}
        if not self.retrievers:
            raise ValueError("retrievers: at least one retriever is required")
        for name, r in self.retrievers.items():
            if isinstance(r, BM25Config):
                if not text_fields:
                    raise ValueError(f"retrievers.{name}: bm25 needs at least one field of type text")
                for f in r.fields or {}:
                    if f not in text_fields:
                        raise ValueError(
                            f"retrievers.{name}.fields.{f}: not a text field of this index "
                            f"(text fields: {sorted(text_fields)})"
                        )
        for f in getattr(self.backend, "field_map", {}):
            if f not in self.fields:
                raise ValueError(f"backend.field_map.{f}: not a field of this index (fields: {sorted(self.fields)})")
        for f in self.embedder.fields:
            if f not in self.fields:
                raise ValueError(f"embedder.fields: unknown field {f!r} (fields: {sorted(self.fields)})")
        for r in self.fusion.weights:
            if r not in self.retrievers:
                raise ValueError(f"fusion.weights.{r}: no such retriever (retrievers: {sorted(self.retrievers)})")
        if self.features is not None:
            ft = self.features
            for f in (ft.keyword.fields or []) if ft.keyword else []:
                if f not in text_fields:
                    raise ValueError(f"features.keyword.fields: {f!r} is not a text field (text fields: {sorted(text_fields)})")
            if ft.recency and self.fields.get(ft.recency.field, None) is None:
                raise ValueError(f"features.recency.field: the index has no field {ft.recency.field!r}")
            if ft.recency and self.fields[ft.recency.field].type != "date":
                raise ValueError(f"features.recency.field: {ft.recency.field!r} is a {self.fields[ft.recency.field].type} field, not a date")
            for i, nf in enumerate(ft.numeric):
                if nf.field not in self.fields or self.fields[nf.field].type not in ("integer", "float"):
                    raise ValueError(f"features.numeric.{i}.field: {nf.field!r} is not a numeric field of this index")
        seen: set[str] = set()
        for i, s in enumerate(self.stages):
            if s.stage_name in seen or s.stage_name in self.retrievers or s.stage_name == "fusion":
                raise ValueError(f"stages.{i}.name: {s.stage_name!r} is used twice; give each stage its own name")
            seen.add(s.stage_name)
            if s.combine is not None:
                allowed = {"fusion", s.stage_name, *(t.stage_name for t in self.stages[:i])}
                for src in s.combine.weights:
                    if src not in allowed:
                        raise ValueError(f"stages.{i}.combine.weights.{src}: not a score this stage can see "
                                         f"(it can combine {sorted(allowed)})")
            if s.type == "ltr" and self.features is None:
                raise ValueError(f"stages.{i}: an ltr stage needs a `features:` section declaring its feature set")
            for f in getattr(s, "fields", []) or []:
                if f not in self.fields:
                    raise ValueError(f"stages.{i}.fields: unknown field {f!r} (fields: {sorted(self.fields)})")
        return self

    def bm25_fields(self, r: BM25Config) -> dict[str, float]:
        return r.fields or {n: 1.0 for n, f in self.fields.items() if f.type == "text"}

    def index_fingerprint(self) -> str:
        """Hash of what the stored index depends on (fields and embedder), not of the ranking."""
        blob = json.dumps(
            {"fields": {k: v.model_dump() for k, v in self.fields.items()}, "embedder": self.embedder.model_dump()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _key_path(loc: tuple[Any, ...], data: Any) -> str:
    """The error's location as a key path in the user's file, without pydantic's union-tag steps."""
    parts: list[str] = []
    cur = data
    for step in loc:
        if isinstance(cur, dict) and isinstance(step, str) and step not in cur:
            if step in (cur.get("type"), cur.get("method")) or "[" in step or step.startswith("function-"):
                continue  # a discriminated-union tag, not a key the user wrote
        parts.append(str(step))
        if isinstance(cur, dict):
            cur = cur.get(step)
        elif isinstance(cur, list) and isinstance(step, int) and 0 <= step < len(cur):
            cur = cur[step]
        else:
            cur = None
    return ".".join(parts)


def _format_validation_error(exc: ValidationError, data: Any) -> tuple[str, str]:
    errs = exc.errors()
    first = errs[0]
    key = _key_path(tuple(first["loc"]), data)
    msg = first["msg"]
    ctx = first.get("ctx") or {}
    if first["type"] == "union_tag_invalid":
        tag = str(ctx.get("discriminator", "type")).strip("'")
        key = f"{key}.{tag}" if key else tag
        msg = f"unknown {tag} {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    elif first["type"] == "union_tag_not_found":
        tag = str(ctx.get("discriminator", "type")).strip("'")
        key = f"{key}.{tag}" if key else tag
        msg = f"missing; say which {tag} this is"
    elif first["type"] == "literal_error" and first["loc"] and first["loc"][-1] in ("type", "method"):
        msg = f"unknown {first['loc'][-1]} {first.get('input')!r}; expected {ctx.get('expected')}"
    elif first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; docs/config.md lists every key)"
    elif first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not key and ": " in msg:
            key, msg = msg.split(": ", 1)
    more = f" (and {len(errs) - 1} more error{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    return key, msg + more


def parse_config(data: Any, source: str) -> IndexConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, "", "expected a mapping at the top level")
    try:
        return IndexConfig.model_validate(data)
    except ValidationError as exc:
        key, msg = _format_validation_error(exc, infer_tags(data))
        raise ConfigError(source, key, msg) from None


def load_config_file(path: Path) -> IndexConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
    cfg = parse_config(data, str(path))
    if cfg.index != path.stem:
        raise ConfigError(str(path), "index", f"{cfg.index!r} does not match the file name {path.stem!r}")
    return cfg


def find_config_file(name: str, config_dir: Path | None) -> Path | None:
    for d in ([config_dir] if config_dir else []) + [BUILTIN_CONFIG_DIR]:
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    return None


def load_config(name: str, config_dir: Path | None) -> IndexConfig:
    path = find_config_file(name, config_dir)
    if path is None:
        raise ConfigError(
            str((config_dir or BUILTIN_CONFIG_DIR) / f"{name}.yaml"),
            "",
            f"no cascade config for index {name!r}; `cascade index --corpus FILE --index {name}` writes a starter one",
        )
    return load_config_file(path)


def load_config_dir(config_dir: Path) -> dict[str, IndexConfig]:
    """Load and validate every NAME.yaml in a folder; the first bad file stops start-up."""
    if not config_dir.is_dir():
        raise ConfigError(str(config_dir), "", "config directory does not exist")
    return {p.stem: load_config_file(p) for p in sorted(config_dir.glob("*.yaml"))}


def starter_config(name: str) -> IndexConfig:
    """A config for a new BEIR-style corpus (title + text): BM25 + kNN fused by RRF."""
    return IndexConfig(index=name, description=f"Starter cascade for {name}; edit and bump version.")


def dump_config(cfg: IndexConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=False), sort_keys=False)
