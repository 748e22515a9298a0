"""Stage registry: a new stage is one module plus one line in STAGE_CONFIGS.

Each entry is the stage's pydantic config class; its ``type`` literal is the
name used in cascade YAML files and its ``build`` method makes the stage.
"""

from cascade.stages.base import BuildContext, Reranker, Stage, StageConfigBase, apply_scores
from cascade.stages.cross_encoder import CrossEncoderConfig
from cascade.stages.ltr import LTRConfig

STAGE_CONFIGS: list[type[StageConfigBase]] = [
    CrossEncoderConfig,
    LTRConfig,
]

__all__ = ["STAGE_CONFIGS", "BuildContext", "Reranker", "Stage", "StageConfigBase", "apply_scores"]
