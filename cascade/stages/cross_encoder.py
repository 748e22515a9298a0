"""Cross-encoder stage: reads query and document together, the most accurate and the costliest phase.

Where the model runs is the ``backend`` key: torch or ONNX Runtime in this
process, or a rerank API over HTTP (``remote:``, a
:class:`cascade.endpoints.RemoteEndpoint`). The stage only builds texts and
orders: its scorer comes composed from the build context (runtime,
micro-batcher, pair-score cache; :mod:`cascade.models.scorers`). Cost is
counted in pairs; scores depend on (query, document text) only, so they may be
cached per pair under the scorer's model stamp.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade.candidates import Candidates
from cascade.endpoints import RemoteEndpoint, fold_flat_keys
from cascade.models.lookup import display_name
from cascade.models.pair_encoding import CHARS_PER_TOKEN_CAP, fallback_scores
from cascade.stages.base import BuildContext, Reranker, StageConfigBase

REMOTE = ("tei", "cohere", "jina")
MULTIMODAL = ("jina",)  # remote APIs that take an image beside a document's text (Jina's multimodal shape)


class MicroBatch(BaseModel):
    """Score concurrent requests together (local backends): see cascade/models/microbatch.py."""

    model_config = ConfigDict(extra="forbid")

    max_wait_ms: float = Field(default=2.0, ge=0, le=1000,
                               description="Longest wait of a request for others to join its pass.")
    max_pairs: int = Field(default=256, ge=1, le=100_000, description="Most pairs in one pass (whole requests).")


class CrossEncoderConfig(StageConfigBase):
    cost_unit: ClassVar[str] = "pairs"
    pair_cacheable: ClassVar[bool] = True

    type: Literal["cross_encoder"] = "cross_encoder"
    backend: Literal["torch", "onnx", "tei", "cohere", "jina"] = Field(
        default="torch", description="torch / onnx: run here; tei, cohere, jina: a rerank API at `remote.url`.")
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
    remote: RemoteEndpoint | None = Field(default=None, description="Remote backends: the rerank API (url, "
                                          "api_key_env, timeout_s, retries, backoff_s, max_concurrency).")
    max_batch: int = Field(default=32, ge=1, le=10_000, description="Remote: most documents in one request.")
    image_field: str | None = Field(
        default=None, description="Backend jina with a multimodal model (jina-reranker-m0): a document field holding "
        "an image (URL or base64 data), scored as an entry of its own beside the text (the model reads one "
        "modality per entry); the document keeps the better score. Pair scores are then not cached.")
    micro_batch: MicroBatch | None = Field(
        default=None, description="torch / onnx: merge concurrent requests into shared passes; unset: per request.")

    @model_validator(mode="before")
    @classmethod
    def _flat_remote_keys(cls, data: Any) -> Any:
        return fold_flat_keys(data)  # `url: ...` at the top level still works

    @model_validator(mode="after")
    def _keys_fit_backend(self) -> "CrossEncoderConfig":
        # Checked on values, not on which keys were written, so that `cascade config show` output loads back.
        if self.backend in REMOTE and self.remote is None:
            raise ValueError(f"backend {self.backend} needs `url` (the rerank API's address)")
        if self.backend not in REMOTE and self.remote is not None:
            raise ValueError(f"url and api_key_env are for backends {', '.join(REMOTE)}, not {self.backend}")
        if self.backend != "onnx" and self.onnx_file != "model.onnx":
            raise ValueError("`onnx_file` applies to backend onnx only")
        if self.backend in REMOTE and self.micro_batch is not None:
            raise ValueError(f"`micro_batch` applies to the local backends torch and onnx, not {self.backend} "
                             "(a rerank API batches on its own side; use `max_batch`)")
        if self.image_field is not None and self.backend not in MULTIMODAL:
            raise ValueError(f"`image_field` needs a remote backend that accepts images ({', '.join(MULTIMODAL)}), "
                             f"not {self.backend}")
        if self.backend != "torch" and self.dtype != "auto":
            raise ValueError("`dtype` applies to backend torch only (onnx: choose the file with `onnx_file`)")
        return self

    def text_fields(self) -> list[str]:
        return list(self.fields) + ([self.image_field] if self.image_field else [])

    def scorer_key(self) -> tuple:
        """What makes two stages' scorers the same one (profiles differing in rerank/keep/combine share it)."""
        return ("cross_encoder", self.backend, self.model, tuple(self.fallback), self.batch_size, self.max_length,
                self.dtype, self.onnx_file, self.remote.model_dump_json() if self.remote else None, self.max_batch,
                self.micro_batch.model_dump_json() if self.micro_batch else None, self.image_field)

    def load_runtime(self, settings: Any) -> Any:
        """The model behind the scorer: a blocking local runtime, or an async rerank API client."""
        if self.backend == "torch":
            from cascade.models.torch_ce import load_cross_encoder

            return load_cross_encoder([self.model, *self.fallback], settings, max_length=self.max_length,
                                      batch_size=self.batch_size, dtype=self.dtype)
        if self.backend == "onnx":
            from cascade.models.onnx_ce import load_onnx_cross_encoder

            return load_onnx_cross_encoder([self.model, *self.fallback], settings, onnx_file=self.onnx_file,
                                           max_length=self.max_length, batch_size=self.batch_size)
        from connectors.rerank_api import RemoteReranker

        assert self.remote is not None  # checked above
        return RemoteReranker.from_endpoint(self.backend, self.remote, self.model, max_batch=self.max_batch,
                                            max_chars=self.max_length * CHARS_PER_TOKEN_CAP,
                                            who=f"cross_encoder {self.stage_name}")

    def build(self, ctx: BuildContext) -> "CrossEncoderStage":
        # Pair-score cache keys hash the text: a document's image would not be in the key.
        scorer = ctx.scorer(self.scorer_key(), lambda: self.load_runtime(ctx.settings),
                            micro_batch=self.micro_batch, cacheable=self.pair_cacheable and not self.image_field)
        return CrossEncoderStage(self, scorer)


class CrossEncoderStage(Reranker):
    def __init__(self, cfg: CrossEncoderConfig, scorer: Any):
        self.configure(cfg)
        self.cfg, self.scorer = cfg, scorer
        self.image_field = cfg.image_field

    async def score(self, query, candidates: Candidates, deadline: float | None) -> np.ndarray:
        docs: list[Any] = [candidates.text(i, self.cfg.fields) for i in range(len(candidates))]
        if self.image_field:  # a multimodal remote model: the image travels beside the text
            docs = [{"text": t, "image": (candidates.fields[i] or {}).get(self.image_field)}
                    for i, t in enumerate(docs)]
        raw = np.asarray(await self.scorer.score(query.text, docs, deadline), dtype=np.float64)
        # Documents that could not be scored (empty, refused) rank below every scored one of this window,
        # cached scores included; the fallback itself is never cached.
        return fallback_scores(raw, np.isfinite(raw))

    def describe(self) -> dict[str, Any]:
        # describe() is served publicly: the model's name, not the folder it was loaded from.
        return {**super().describe(), "backend": self.cfg.backend, "model": display_name(self.scorer.name),
                "max_length": self.cfg.max_length, "dtype": getattr(self.scorer, "dtype", None)}

    def model_stamp(self) -> str | None:
        return self.scorer.stamp

    async def close(self) -> None:
        await self.scorer.close()
