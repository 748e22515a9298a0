"""Cross-encoders run by ONNX Runtime from a folder written by ``cascade models export-onnx``.

ONNX Runtime needs neither torch nor transformers at query time, and its int8
kernels (``model.int8.onnx``) are about twice as fast as torch float32 on a
CPU (see docs/benchmarks.md). Tokenization is the same :class:`PairEncoder`
the torch backend uses, so both score identical token ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import ModelNotFound
from cascade.extras import require
from cascade.settings import Settings
from cascade.models.lookup import file_stamp
from cascade.models.pair_encoding import PairEncoder, score_pairs, score_requests

log = logging.getLogger(__name__)

META_FILE = "cascade-onnx.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_lock = threading.Lock()
_sessions: dict[tuple, Any] = {}


def default_threads(settings: Settings) -> int:
    """CASCADE_TORCH_THREADS sets every local model's intra-op threads; ONNX Runtime's own default
    (one per core) would fight the event loop and the other stages for the same cores."""
    return settings.torch_threads or 2


class OnnxCrossEncoder:
    def __init__(self, folder: Path, onnx_file: str, session: Any, tokenizer: Any, meta: dict,
                 max_length: int, batch_size: int):
        self.folder, self.session, self.meta, self.batch_size = folder, session, meta, batch_size
        self.name = str(folder / onnx_file)
        self.dtype = "int8" if "int8" in onnx_file else "float32"
        names = [i.name for i in session.get_inputs()]
        unknown = [n for n in names if n not in INPUTS]
        if unknown:
            raise ValueError(f"{self.name} wants inputs {unknown}; cascade feeds only {', '.join(INPUTS)}")
        self.max_length = min(max_length, int(meta.get("max_length") or 512))
        self.encoder = PairEncoder(tokenizer, self.max_length, int(meta.get("pad_token_id") or 0), names)
        self.output = session.get_outputs()[0].name
        blob = repr((self.name, file_stamp(folder / onnx_file), file_stamp(folder), self.max_length)).encode()
        self.stamp = "onnx:" + hashlib.sha256(blob).hexdigest()[:16]

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run([self.output], inputs)[0]
        return np.asarray(out, dtype=np.float64).reshape(len(out), -1)[:, -1]

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        return score_pairs(self.encoder, query, docs, self.batch_size, self._run)

    def score_many(self, requests: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        """Several requests in one pass, pairs length-sorted across them (what the micro-batcher calls)."""
        return score_requests(self.encoder, requests, self.batch_size, self._run)


def find_export(spec: str, settings: Settings) -> Path | None:
    """An exported folder: a path, then a name under CASCADE_MODELS_DIR, then under CASCADE_TRAINED_DIR."""
    for base in (None, settings.models_dir, settings.trained_dir):
        p = Path(spec).expanduser() if base is None else Path(base).expanduser() / spec
        if p.is_dir():
            return p.resolve()
    return None


def open_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_onnx_cross_encoder(specs: list[str], settings: Settings, onnx_file: str = "model.onnx",
                            max_length: int = 256, batch_size: int = 32, threads: int | None = None) -> OnnxCrossEncoder:
    """The first spec that names an exported folder holding ``onnx_file``; the error lists every spec and why."""
    require("onnxruntime", "onnx", "a cross_encoder stage with backend onnx")
    from tokenizers import Tokenizer

    threads = threads or default_threads(settings)
    tried = []
    for spec in specs:
        folder = find_export(spec, settings)
        if folder is None:
            tried.append(f"{spec}: not a folder, nor under CASCADE_MODELS_DIR or CASCADE_TRAINED_DIR")
            continue
        path = folder / onnx_file
        if not path.is_file():
            have = sorted(p.name for p in folder.glob("*.onnx")) or "no .onnx file"
            tried.append(f"{spec}: {folder} has no {onnx_file} (it has {have})")
            continue
        try:
            key = (str(path), file_stamp(path), threads)  # re-exported in place: a new session
            with _lock:
                session = _sessions.get(key)
            if session is None:
                session = open_session(path, threads)
                with _lock:
                    _sessions[key] = session
            meta_path = folder / META_FILE
            meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            scorer = OnnxCrossEncoder(folder, onnx_file, session, tokenizer, meta, max_length, batch_size)
        except Exception as exc:  # a corrupt graph, a missing tokenizer: try the next spec
            tried.append(f"{spec}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        if spec != specs[0]:
            log.warning("onnx cross-encoder %r not available; using fallback %r", specs[0], spec)
        return scorer
    raise ModelNotFound("no ONNX cross-encoder could be loaded (export one with `cascade models export-onnx "
                        "MODEL --out DIR` and name DIR as the model):\n  " + "\n  ".join(tried))
