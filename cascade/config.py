"""Per-index cascade configuration: one YAML file per index, validated at start-up.

A config reads like a Vespa rank profile: the retrievers, how they are fused,
then the phases in order with how many hits each one re-ranks and keeps.
Validation errors name the file, the key path and the reason, so a bad file
never gets as far as serving traffic.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from cascade.backend_config import AwsSigV4Config, EmbeddedBackendConfig, OpenSearchBackendConfig
from cascade.errors import ConfigError
from cascade.experiments.config import ExperimentConfig, check_experiments
from cascade.profiles import resolve_profiles
from cascade.stages import StageItem
from features.config import FeatureSetConfig

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


class ProfileConfig(_Strict):
    """One rank profile: how candidates are fused, which features are computed, and the stages in order.

    Profiles of an index share its backend, fields, embedder and retrievers (and
    loaded models); they differ only in how they rank. ``inherit`` is resolved
    when the file is read (:mod:`cascade.profiles`), so a profile here is complete.
    """

    description: str = ""
    fusion: FusionConfig = Field(default_factory=RRFConfig)
    features: FeatureSetConfig | None = Field(default=None, description="Learning-to-rank features (see docs/config.md).")
    stages: list[StageItem] = Field(default_factory=list)

    def enabled_stages(self) -> list[Any]:
        return [s for s in self.stages if s.enabled]


class IndexConfig(_Strict):
    """One index: its backend, fields, embedder and retrievers once, and one or more rank profiles.

    The top-level ``fusion``, ``features`` and ``stages`` are the ``default``
    profile (a config without ``profiles`` is a one-profile index); ``profiles``
    adds named ones, each may ``inherit`` another and override parts of it.
    """

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
    stages: list[StageItem] = Field(default_factory=list)
    profiles: dict[str, ProfileConfig] = Field(
        default_factory=dict, description="Rank profiles besides `default` (the top level), by name; `inherit` "
                                          "is resolved when the file is read.")
    default_profile: str = Field(default="default", description="The profile a request without `profile` gets.")
    limits: Limits = Field(default_factory=Limits)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    experiments: dict[str, ExperimentConfig] = Field(
        default_factory=dict, description="Online experiments over this index's rank profiles, by id (A/B, "
                                          "interleaving, multileaving; see docs/experiments.md).")

    @model_validator(mode="before")
    @classmethod
    def _infer_tags(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_profiles(infer_tags(data), infer_tags, info.context)

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> "IndexConfig":
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
        if "default" in self.profiles:
            raise ValueError("profiles.default: the top-level fusion, features and stages are the default profile")
        if self.default_profile not in self.profile_names():
            raise ValueError(f"default_profile: no profile {self.default_profile!r} (profiles: {self.profile_names()})")
        for name in self.profile_names():
            top = name == "default" and bool((info.context or {}).get("default_at_top", True))
            self._check_profile(name, self.profile(name), "" if top else f"profiles.{name}.")
        check_experiments(self.experiments, self.profile_names())
        return self

    def _check_profile(self, name: str, prof: ProfileConfig, at: str) -> None:
        """Checks of one profile against the index; keys are paths in the user's file (``at`` is the prefix)."""
        text_fields = {n for n, f in self.fields.items() if f.type == "text"}
        for r in prof.fusion.weights:
            if r not in self.retrievers:
                raise ValueError(f"{at}fusion.weights.{r}: no such retriever (retrievers: {sorted(self.retrievers)})")
        ft = prof.features
        if ft is not None:
            for f in (ft.keyword.fields or []) if ft.keyword else []:
                if f not in text_fields:
                    raise ValueError(f"{at}features.keyword.fields: {f!r} is not a text field (text fields: {sorted(text_fields)})")
            if ft.recency and self.fields.get(ft.recency.field, None) is None:
                raise ValueError(f"{at}features.recency.field: the index has no field {ft.recency.field!r}")
            if ft.recency and self.fields[ft.recency.field].type != "date":
                raise ValueError(f"{at}features.recency.field: {ft.recency.field!r} is a {self.fields[ft.recency.field].type} field, not a date")
            for i, nf in enumerate(ft.numeric):
                if nf.field not in self.fields or self.fields[nf.field].type not in ("integer", "float"):
                    raise ValueError(f"{at}features.numeric.{i}.field: {nf.field!r} is not a numeric field of this index")
        view = SimpleNamespace(index=self.index, fields=self.fields, retrievers=self.retrievers, features=ft)
        seen: set[str] = set()
        for i, s in enumerate(prof.stages):
            key = f"{at}stages.{i}"
            if s.stage_name in seen or s.stage_name in self.retrievers or s.stage_name == "fusion":
                raise ValueError(f"{key}.name: {s.stage_name!r} is used twice; give each stage its own name")
            seen.add(s.stage_name)
            if s.combine is not None and s.enabled:
                allowed = {"fusion", s.stage_name, *(t.stage_name for t in prof.stages[:i] if t.enabled)}
                off = {t.stage_name for t in prof.stages if not t.enabled}
                for src in s.combine.weights:
                    if src in off:
                        raise ValueError(f"{key}.combine.weights.{src}: stage {src} is disabled (enabled: false) "
                                         f"in this profile, so there is no score to combine")
                    if src not in allowed:
                        raise ValueError(f"{key}.combine.weights.{src}: not a score this stage can see "
                                         f"(it can combine {sorted(allowed)})")
            s.validate_index(view, key)

    def profile_names(self) -> list[str]:
        """Every rank profile: ``default`` (the top level) first, then the named ones."""
        return ["default", *self.profiles]

    def profile(self, name: str | None = None) -> ProfileConfig:
        """A profile by name (None: the index's default_profile); UnknownProfile lists them all."""
        from cascade.errors import UnknownProfile

        name = name or self.default_profile
        if name == "default":
            return ProfileConfig.model_construct(description=self.description, fusion=self.fusion,
                                                 features=self.features, stages=self.stages)
        prof = self.profiles.get(name)
        if prof is None:
            raise UnknownProfile(self.index, name, self.profile_names())
        return prof

    def for_profile(self, name: str | None = None) -> "IndexConfig":
        """This config with the top-level fusion, features and stages of profile ``name`` (what its cascade reads)."""
        name = name or self.default_profile
        if name == "default":
            return self
        prof = self.profile(name)
        return self.model_copy(update={"fusion": prof.fusion, "features": prof.features, "stages": prof.stages})

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
        elif re.match(r"^[a-z_][a-z0-9_.]*: ", msg):  # a nested model's check naming its own key ("arms: ...")
            sub, msg = msg.split(": ", 1)
            key = f"{key}.{sub}"
    more = f" (and {len(errs) - 1} more error{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    return key, msg + more


def parse_config(data: Any, source: str) -> IndexConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, "", "expected a mapping at the top level")
    try:
        return IndexConfig.model_validate(data, context={})
    except ValidationError as exc:
        key, msg = _format_validation_error(exc, infer_tags(data))
        raise ConfigError(source, key, msg) from None


def load_config_file(path: Path) -> IndexConfig:
    """Read and validate one NAME.yaml; every error names the file by its absolute path, the key and the reason."""
    path = Path(path).absolute()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(str(path), f"line {line}, column {column}",
                          f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") from None
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
    return {p.stem: load_config_file(p) for p in sorted(config_dir.absolute().glob("*.yaml"))}


def starter_config(name: str) -> IndexConfig:
    """A config for a new BEIR-style corpus (title + text): BM25 + kNN fused by RRF."""
    return IndexConfig(index=name, description=f"Starter cascade for {name}; edit and bump version.")


def dump_config(cfg: IndexConfig) -> str:
    """The effective config as YAML that loads back: one-profile indexes in the plain layout, others with
    every profile resolved (no ``inherit`` left) and no top-level fusion/features/stages."""
    data = cfg.model_dump(mode="json", exclude_defaults=False)
    if not cfg.profiles:
        data.pop("profiles", None)
    if cfg.default_profile == "default":
        data.pop("default_profile", None)
    return yaml.safe_dump(data, sort_keys=False)
