"""The bi-encoder that embeds queries and documents for kNN and semantic features."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from cascade.extras import require
from cascade.models.lookup import load_first, torch_dtype
from cascade.settings import Settings


class Embedder:
    """A sentence-transformers bi-encoder producing L2-normalized float32 vectors (cosine = dot)."""

    def __init__(self, name: str, model: Any, batch_size: int = 64):
        self.name, self.model, self.batch_size = name, model, batch_size
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dim())
        self.max_length = int(model.max_seq_length)
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    def encode_query(self, text: str) -> np.ndarray:
        """One query's vector, cached: kNN retrieval and semantic features embed the same text once."""
        with self._cache_lock:
            v = self._query_cache.get(text)
            if v is not None:
                self._query_cache.move_to_end(text)
                return v
        v = self.encode([text])[0]
        with self._cache_lock:
            self._query_cache[text] = v
            while len(self._query_cache) > 4096:
                self._query_cache.popitem(last=False)
        return v

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        vecs = self.model.encode(
            texts, batch_size=batch_size or self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        vecs = np.asarray(vecs, dtype=np.float32)
        # Normalize again in float32: a bfloat16 model's unit vectors are only unit to ~3 digits.
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return np.ascontiguousarray(vecs / np.maximum(norms, 1e-12))


def load_embedder(spec: str, settings: Settings, max_length: int | None = None, batch_size: int = 64,
                  dtype: str = "auto") -> Embedder:
    require("sentence_transformers", "torch", f"the embedder {spec!r}")
    def loader(target: str):
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(target, device="cpu", model_kwargs={"dtype": torch_dtype(dtype)})
        if max_length:
            m.max_seq_length = max_length
        return m

    name, model = load_first([spec], settings, loader, "embedder", (max_length, str(torch_dtype(dtype))))
    return Embedder(name, model, batch_size)
