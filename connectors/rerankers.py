"""Pair scorers: one interface for every way of scoring (query, document) pairs.

The cross-encoder stage talks only to :class:`PairScorer`; a local
sentence-transformers model is the first implementation, and ONNX Runtime or
remote rerank APIs slot in beside it without touching the stage.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from cascade.settings import Settings
from connectors.models import load_first, torch_dtype


@runtime_checkable
class PairScorer(Protocol):
    name: str

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        """One relevance score per document, higher is better; blocking (call it from a thread)."""
        ...


class SentenceTransformersCrossEncoder:
    def __init__(self, name: str, model: Any, batch_size: int):
        self.name, self.model, self.batch_size = name, model, batch_size
        self.dtype = str(next(model.model.parameters()).dtype).removeprefix("torch.")

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        if not docs:
            return np.zeros(0)
        pairs = [(query, d) for d in docs]
        # Raw logits: the order is what matters, and logits keep more resolution at the top than a sigmoid.
        import torch

        out = self.model.predict(pairs, batch_size=self.batch_size, activation_fn=torch.nn.Identity(),
                                 convert_to_tensor=True, show_progress_bar=False)
        return out.float().cpu().numpy().astype(np.float64).reshape(len(docs))


def load_cross_encoder(specs: list[str], settings: Settings, max_length: int, batch_size: int,
                       dtype: str = "auto") -> PairScorer:
    def loader(target: str):
        from sentence_transformers import CrossEncoder

        return CrossEncoder(target, device="cpu", max_length=max_length, model_kwargs={"dtype": torch_dtype(dtype)})

    name, model = load_first(specs, settings, loader, "cross-encoder", (max_length, str(torch_dtype(dtype))))
    return SentenceTransformersCrossEncoder(name, model, batch_size)
