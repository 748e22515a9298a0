"""Cross-encoders run by torch in this process (loaded by sentence-transformers).

A blocking runtime: :mod:`cascade.models.scorers` runs it in a worker thread
or behind the micro-batcher, and puts the pair-score cache in front of it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from cascade.errors import ModelNotFound
from cascade.extras import require
from cascade.models.lookup import file_stamp, load_first, torch_dtype
from cascade.models.pair_encoding import PairEncoder, score_pairs, score_requests
from cascade.settings import Settings


def model_token_limit(tokenizer: Any, config: Any) -> int:
    """The longest input the model accepts: position embeddings bound it whatever the tokenizer claims."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]  # tokenizers say 1e30 for "none"
    return min(limits) if limits else 512


class SentenceTransformersCrossEncoder:
    """A cross-encoder loaded by sentence-transformers and run by torch in this process.

    sentence-transformers loads the model (local folder or hub, dtype, label
    count); scoring goes through the shared :class:`PairEncoder` instead of
    ``CrossEncoder.predict`` so that documents are cut by tokens after the query
    (``predict`` cuts the longer of the two) and batches are sorted by token
    length, exactly as the ONNX backend does.
    """

    def __init__(self, name: str, model: Any, batch_size: int, max_length: int = 256):
        import torch

        self.name, self.model, self.batch_size = name, model, batch_size
        self.net = model.model  # the transformers *ForSequenceClassification module
        self.dtype = str(next(self.net.parameters()).dtype).removeprefix("torch.")
        tok = model.tokenizer
        if getattr(tok, "backend_tokenizer", None) is None:
            raise ModelNotFound(f"{name}: cascade needs the model's fast tokenizer (tokenizer.json); it has none")
        self.max_length = min(max_length, model_token_limit(tok, self.net.config))
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tok.model_input_names]
        self.encoder = PairEncoder(tok.backend_tokenizer, self.max_length, int(tok.pad_token_id or 0), names)
        self._torch = torch
        # What the scores depend on: the weights on disk, the token limit and the precision.
        blob = repr((name, file_stamp(name), self.max_length, self.dtype)).encode()
        self.stamp = "torch:" + hashlib.sha256(blob).hexdigest()[:16]

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            logits = self.net(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits
        # Raw logits: the order is what matters, and logits keep more resolution at the top than a sigmoid.
        return logits[:, -1].float().numpy().astype(np.float64)

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        return score_pairs(self.encoder, query, docs, self.batch_size, self._run)

    def score_many(self, requests: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        """Several requests in one pass, pairs length-sorted across them (what the micro-batcher calls)."""
        return score_requests(self.encoder, requests, self.batch_size, self._run)


def load_cross_encoder(specs: list[str], settings: Settings, max_length: int, batch_size: int,
                       dtype: str = "auto") -> SentenceTransformersCrossEncoder:
    require("sentence_transformers", "torch", "a cross_encoder stage with backend torch")
    def loader(target: str):
        from sentence_transformers import CrossEncoder

        return CrossEncoder(target, device="cpu", max_length=max_length, model_kwargs={"dtype": torch_dtype(dtype)})

    name, model = load_first(specs, settings, loader, "cross-encoder", (max_length, str(torch_dtype(dtype))))
    return SentenceTransformersCrossEncoder(name, model, batch_size, max_length)
