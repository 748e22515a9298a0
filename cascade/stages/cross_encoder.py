"""Cross-encoder stage: reads query and document together, the most accurate and the costliest phase.

Where the model runs is the ``backend`` key: torch or ONNX Runtime in this
process, or a rerank API over HTTP. Every backend is a
:class:`connectors.rerankers.PairScorer`, so the stage itself only builds
texts and orders. With ``micro_batch`` a local backend scores concurrent requests
together, in shared passes (:mod:`connectors.microbatch`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade.candidates import Candidates
from cascade.stages.base import BuildContext, Reranker, StageConfigBase
from connectors import microbatch

REMOTE = ("tei", "cohere", "jina")
log = logging.getLogger(__name__)


class MicroBatch(BaseModel):
    """Score concurrent requests together (local backends): see connectors/microbatch.py."""

    model_config = ConfigDict(extra="forbid")

    max_wait_ms: float = Field(default=2.0, ge=0, le=1000,
                               description="Longest wait of a request for others to join its pass.")
    max_pairs: int = Field(default=256, ge=1, le=100_000, description="Most pairs in one pass (whole requests).")


class CrossEncoderConfig(StageConfigBase):
    type: Literal["cross_encoder"] = "cross_encoder"
    backend: Literal["torch", "onnx", "tei", "cohere", "jina"] = Field(
        default="torch", description="torch / onnx: run here; tei, cohere, jina: a rerank API at `url`.")
    model: str = Field(description="torch: path, folder under CASCADE_MODELS_DIR, or hub name; onnx: an exported "
                                   "folder; remote: the model name sent to the API.")
    fallback: list[str] = Field(default_factory=list, description="Tried in order when `model` cannot be loaded.")
    fields: list[str] = Field(default_factory=lambda: ["title", "text"], description="Document text: these fields joined.")
    batch_size: int = Field(default=32, ge=1, le=1024)
    max_length: int = Field(default=256, ge=16, le=8192, description="Token limit of query + document.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="torch: auto = bfloat16 on CPUs with native bf16 (AMX/AVX-512 BF16), else float32."
    )
    onnx_file: Literal["model.onnx", "model.int8.onnx"] = Field(
        default="model.onnx", description="onnx: float32 graph or its dynamically quantized int8 copy.")
    url: str | None = Field(default=None, description="Remote backends: the API's base URL or full endpoint.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="Remote: per request.")
    max_batch: int = Field(default=32, ge=1, le=10_000, description="Remote: most documents in one request.")
    retries: int = Field(default=2, ge=0, le=10, description="Remote: retries after 429, 5xx or a refused connection.")
    backoff_s: float = Field(default=0.2, ge=0, le=60, description="Remote: first retry delay; doubles each time.")
    micro_batch: MicroBatch | None = Field(
        default=None, description="torch / onnx: merge concurrent requests into shared passes; unset: per request.")

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data):
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("api_key: never put secrets in the config; set api_key_env to the name of an "
                             "environment variable that holds it")
        return data

    @model_validator(mode="after")
    def _keys_fit_backend(self) -> "CrossEncoderConfig":
        # Checked on values, not on which keys were written, so that `cascade config show` output loads back.
        if self.backend in REMOTE and not self.url:
            raise ValueError(f"backend {self.backend} needs `url` (the rerank API's address)")
        if self.backend not in REMOTE and (self.url or self.api_key_env):
            raise ValueError(f"url and api_key_env are for backends {', '.join(REMOTE)}, not {self.backend}")
        if self.backend != "onnx" and self.onnx_file != "model.onnx":
            raise ValueError("`onnx_file` applies to backend onnx only")
        if self.backend in REMOTE and self.micro_batch is not None:
            raise ValueError(f"`micro_batch` applies to the local backends torch and onnx, not {self.backend} "
                             "(a rerank API batches on its own side; use `max_batch`)")
        if self.backend != "torch" and self.dtype != "auto":
            raise ValueError("`dtype` applies to backend torch only (onnx: choose the file with `onnx_file`)")
        return self

    def build(self, ctx: BuildContext) -> "CrossEncoderStage":
        from connectors.rerankers import load_pair_scorer

        return CrossEncoderStage(self, load_pair_scorer(self, ctx.settings))


class CrossEncoderStage(Reranker):
    kind = "cross_encoder"

    def __init__(self, cfg: CrossEncoderConfig, scorer):
        super().__init__(cfg.stage_name, cfg.rerank, cfg.keep, cfg.combine)
        self.batcher: microbatch.MicroBatcher | None = None
        if cfg.micro_batch is not None:
            if microbatch.supports_micro_batch(scorer):
                self.batcher = microbatch.MicroBatcher(scorer, cfg.micro_batch.max_wait_ms, cfg.micro_batch.max_pairs)
                # Still a blocking PairScorer, so that wrappers (the service's pair-score cache) keep working.
                scorer = microbatch.MicroBatchedScorer(scorer, self.batcher)
            else:
                log.warning("cross-encoder %s cannot score several requests at once; micro_batch is ignored",
                            getattr(scorer, "name", scorer))
        self.cfg, self.scorer = cfg, scorer

    async def score(self, query, candidates: Candidates, deadline: float | None) -> np.ndarray:
        docs = [candidates.text(i, self.cfg.fields) for i in range(len(candidates))]
        if self.batcher is None:
            # Tokenization and inference (or the HTTP round trips) block: a thread keeps the event loop free.
            return await asyncio.to_thread(self.scorer.score, query.text, docs)
        if isinstance(self.scorer, microbatch.MicroBatchedScorer):  # not wrapped: straight to the queue
            return await self.batcher.score(query.text, docs)
        # Wrapped after the build (pair-score cache): the wrapper runs in a thread and queues its misses here.
        return await microbatch.to_thread(self.scorer.score, query.text, docs)

    def describe(self):
        return {**super().describe(), "backend": self.cfg.backend, "model": self.scorer.name,
                "max_length": self.cfg.max_length, "dtype": getattr(self.scorer, "dtype", None)}
