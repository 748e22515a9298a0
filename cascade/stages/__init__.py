"""Stages: the contract (:mod:`cascade.stages.base`), the registry, and one module per built-in type.

A new stage type is one module plus one ``register_stage`` line below.
"""

from cascade.stages.base import BuildContext, Combine, Reranker, Stage, StageConfigBase, apply_scores
from cascade.stages.registry import STAGE_TYPES, StageItem, register_stage
from cascade.stages.cross_encoder import CrossEncoderConfig
from cascade.stages.ltr import LTRConfig
from cascade.stages.llm import LLMConfig

register_stage(CrossEncoderConfig)
register_stage(LTRConfig)
register_stage(LLMConfig)

STAGE_CONFIGS = list(STAGE_TYPES.values())  # the built-in ones, in registration order

__all__ = ["STAGE_CONFIGS", "STAGE_TYPES", "BuildContext", "Combine", "Reranker", "Stage", "StageConfigBase",
           "StageItem", "apply_scores", "register_stage"]
