"""Cross-encoder stage: reads query and document together, the most accurate and the costliest phase.

The scoring backend is any :class:`connectors.rerankers.PairScorer` (a local
sentence-transformers model today; ONNX and remote rerank APIs plug in behind
the same interface), so the stage itself only builds texts and orders.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import numpy as np
from pydantic import Field

from cascade.candidates import Candidates
from cascade.stages.base import BuildContext, Reranker, StageConfigBase


class CrossEncoderConfig(StageConfigBase):
    type: Literal["cross_encoder"] = "cross_encoder"
    model: str = Field(description="Local path, a folder name under CASCADE_MODELS_DIR, or a hub name.")
    fallback: list[str] = Field(default_factory=list, description="Tried in order when `model` cannot be found.")
    fields: list[str] = Field(default_factory=lambda: ["title", "text"], description="Document text: these fields joined.")
    batch_size: int = Field(default=32, ge=1, le=1024)
    max_length: int = Field(default=256, ge=16, le=8192, description="Token limit of query + document.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="auto: bfloat16 on CPUs with native bf16 (AMX/AVX-512 BF16), else float32."
    )

    def build(self, ctx: BuildContext) -> "CrossEncoderStage":
        from connectors.rerankers import load_cross_encoder

        scorer = load_cross_encoder(
            [self.model, *self.fallback], ctx.settings, max_length=self.max_length, batch_size=self.batch_size,
            dtype=self.dtype,
        )
        return CrossEncoderStage(self, scorer)


class CrossEncoderStage(Reranker):
    kind = "cross_encoder"

    def __init__(self, cfg: CrossEncoderConfig, scorer):
        super().__init__(cfg.stage_name, cfg.rerank, cfg.keep)
        self.cfg, self.scorer = cfg, scorer

    async def score(self, query, candidates: Candidates, deadline: float | None) -> np.ndarray:
        docs = [candidates.text(i, self.cfg.fields) for i in range(len(candidates))]
        # Inference holds the GIL only briefly (torch ops release it): a thread keeps the event loop free.
        return await asyncio.to_thread(self.scorer.score, query.text, docs)

    def describe(self):
        return {**super().describe(), "model": self.scorer.name, "max_length": self.cfg.max_length,
                "dtype": getattr(self.scorer, "dtype", None)}
