"""The stage registry: ``type`` in a config's stage list -> the config class that parses and builds it.

A new stage type is one module plus one ``register_stage`` line (the built-in
ones are listed in :mod:`cascade.stages`). Index configs parse their stage
lists through :class:`StageItem`, which looks the type up here at validation
time, so a stage registered later (a plugin, a test fixture) is accepted by
config files, the service and the CLI alike.
"""

from __future__ import annotations

from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

from cascade.stages.base import StageConfigBase

STAGE_TYPES: dict[str, type[StageConfigBase]] = {}


def register_stage(cls: type[StageConfigBase]) -> type[StageConfigBase]:
    """Make ``cls`` (a StageConfigBase subclass with a ``type`` literal) usable in configs."""
    field = cls.model_fields.get("type")
    name = field.default if field is not None else None
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a `type: Literal[...] = \"name\"` field")
    other = STAGE_TYPES.get(name)
    if other is not None and other is not cls:
        raise ValueError(f"stage type {name!r} is registered already ({other.__module__}.{other.__name__})")
    STAGE_TYPES[name] = cls
    return cls


def _parse(value: Any) -> StageConfigBase:
    if isinstance(value, StageConfigBase):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("model_type", "expected a mapping with a `type` key, got {got}",
                                  {"got": type(value).__name__})
    kind = value.get("type")
    if kind is None:
        raise PydanticCustomError("union_tag_not_found", "missing; say which type this is",
                                  {"discriminator": "'type'"})
    cls = STAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise PydanticCustomError("union_tag_invalid", "unknown type {tag!r}; expected one of {expected_tags}",
                                  {"discriminator": "'type'", "tag": kind, "expected_tags": ", ".join(sorted(STAGE_TYPES))})
    return cls.model_validate(value)


class StageItem:
    """One entry of a stage list: validated by the registered class its ``type`` names."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _parse, serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v, info: v.model_dump(mode=info.mode, exclude_defaults=info.exclude_defaults),
                info_arg=True, when_used="always"))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"oneOf": [{"$ref": f"#/$defs/{c.__name__}"} for c in STAGE_TYPES.values()],
                "description": "A stage; `type` is one of " + ", ".join(sorted(STAGE_TYPES))}
