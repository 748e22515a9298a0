"""Exporting a cross-encoder to ONNX, float32 and dynamically quantized int8, with the checks that make the files trustworthy.

The export is only worth serving if it ranks like the model it came from, so
it is checked before anything is written as final: the float32 graph must
reproduce torch's logits (within ``FP32_TOLERANCE``) on a few pairs, and the
measured differences of both graphs are recorded in ``cascade-onnx.json``
next to them. Attention is exported in its plain ("eager") form because ONNX
Runtime's transformer optimizer recognizes that pattern and fuses it into one
``Attention`` kernel, which the int8 quantizer then turns into ``QAttention``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import CascadeError, ModelNotFound
from cascade.settings import Settings
from cascade.models.lookup import _in_hub_cache, resolve_model
from cascade.models.onnx_ce import INPUTS, META_FILE, open_session
from cascade.models.pair_encoding import PairEncoder
from cascade.models.torch_ce import model_token_limit

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-3
# Pairs of different lengths (one truncated) so that padding, masks and dynamic axes are all exercised.
CHECK_PAIRS = [
    ("what causes tides", "Tides are caused by the gravitational pull of the moon and the sun on the oceans."),
    ("what causes tides", "The stock market closed higher on Friday."),
    ("insulin resistance and type 2 diabetes", "Insulin resistance precedes type 2 diabetes " * 60),
    ("insulin resistance and type 2 diabetes", "Cells fail to respond to insulin."),
    ("how do vaccines work", "Vaccines train the immune system to recognise a pathogen without causing disease."),
    ("how do vaccines work", ""),
    ("solar power storage", "Lithium batteries store solar electricity for the night; molten salt stores heat."),
    ("a", "b"),
]


class ExportError(CascadeError):
    """The export ran but its graph does not reproduce the model (or could not be written)."""


def _load(spec: str, settings: Settings) -> tuple[str, Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target, local = resolve_model(spec, settings)
    if not local and os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(target):
        raise ModelNotFound(f"{spec}: not a local path, not under CASCADE_MODELS_DIR "
                            f"({settings.models_dir or 'unset'}), and the hub is offline")
    try:
        tok = AutoTokenizer.from_pretrained(target)
        model = AutoModelForSequenceClassification.from_pretrained(target, attn_implementation="eager",
                                                                   dtype="float32").eval()
    except Exception as exc:
        raise ModelNotFound(f"{spec} ({target}): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise ExportError(f"{spec}: the ONNX backend needs a fast tokenizer (tokenizer.json); this model has none")
    return target, tok, model


def _torch_logits(model: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits
    return out[:, -1].float().numpy().astype(np.float64)


def _check(session: Any, model: Any, batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
    ours, ref = [], []
    out_name = session.get_outputs()[0].name
    for b in batches:
        ours.append(np.asarray(session.run([out_name], b)[0], dtype=np.float64).reshape(len(b["input_ids"]), -1)[:, -1])
        ref.append(_torch_logits(model, b))
    a, r = np.concatenate(ours), np.concatenate(ref)
    from scipy.stats import spearmanr

    rho = float(spearmanr(a, r).statistic) if len(a) > 2 else 1.0
    return {"pairs": int(len(a)), "max_abs_diff": float(np.abs(a - r).max()),
            "mean_abs_diff": float(np.abs(a - r).mean()), "spearman": round(rho, 6)}


def _export_graph(model: Any, names: list[str], path: Path, opset: int) -> None:
    import torch

    class Logits(torch.nn.Module):  # positional inputs in a fixed order, one output: what the ONNX graph exposes
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return self.inner(**dict(zip(names, inputs))).logits

    sample = tuple(torch.ones((2, 16), dtype=torch.long) if n != "token_type_ids" else
                   torch.zeros((2, 16), dtype=torch.long) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    # The TorchScript exporter: one self-contained file whose BERT pattern ONNX Runtime's optimizer fuses.
    # The exporter restores the wrapper's train/eval mode on the way out, recursively: build it in eval mode,
    # or the model is left in training mode (dropout on) for the checks that follow.
    torch.onnx.export(Logits(model).eval(), sample, str(path), input_names=names, output_names=["logits"],
                      dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    model.eval()


def _optimize(raw: Path, out: Path, config: Any) -> dict[str, int]:
    """Fuse attention, GELU and layer norms (ONNX Runtime's transformer optimizer); {} when it cannot."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(raw), model_type="bert", num_heads=int(config.num_attention_heads),
                             hidden_size=int(config.hidden_size), opt_level=0)
        fused = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(out))
        return fused
    except Exception as exc:  # an architecture the optimizer does not know: serve the plain graph
        log.warning("ONNX Runtime's transformer optimizer failed (%s); keeping the unfused graph", exc)
        return {}


def _quantize(src: Path, dst: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a "consider pre-processing" hint on every call
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weights": "QInt8, per output channel",
            "activations": "uint8, quantized per tensor at run time"}


def export_onnx(spec: str, settings: Settings, out: Path, int8: bool = True, opset: int = 17,
                max_length: int | None = None) -> dict[str, Any]:
    """Write model.onnx (and model.int8.onnx), tokenizer files and cascade-onnx.json into ``out``; returns the metadata."""
    import onnxruntime
    import torch

    if opset < 17:
        raise ExportError(f"opset {opset}: cascade exports with opset 17 or later")
    target, tok, model = _load(spec, settings)
    limit = model_token_limit(tok, model.config)
    max_length = min(max_length or limit, limit)
    names = [n for n in INPUTS if n in tok.model_input_names]
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "model.raw.onnx"
    try:
        _export_graph(model, names, raw, opset)
        fused = _optimize(raw, out / "model.onnx", model.config)
        encoder = PairEncoder(tok.backend_tokenizer, max_length, int(tok.pad_token_id or 0), names)
        batches = []
        for q in dict.fromkeys(p[0] for p in CHECK_PAIRS):
            docs = [d for qq, d in CHECK_PAIRS if qq == q]
            encs, ok = encoder.encode(q, docs)
            batches += [b.inputs for b in encoder.batches(encs, ok, 4)]
        check = _check(open_session(out / "model.onnx", 2), model, batches) if fused else None
        if check is None or check["max_abs_diff"] > FP32_TOLERANCE:
            if fused:
                log.warning("the fused graph differs from torch by %.2e; keeping the unfused graph", check["max_abs_diff"])
            shutil.copyfile(raw, out / "model.onnx")
            fused = {}
            check = _check(open_session(out / "model.onnx", 2), model, batches)
        if check["max_abs_diff"] > FP32_TOLERANCE:
            raise ExportError(f"{spec}: the ONNX graph's logits differ from torch's by {check['max_abs_diff']:.2e} "
                              f"(tolerance {FP32_TOLERANCE}); not writing a model that ranks differently")
        files: dict[str, Any] = {"model.onnx": {"precision": "float32", "check": check}}
        if int8:
            quant = _quantize(out / "model.onnx", out / "model.int8.onnx")
            files["model.int8.onnx"] = {"precision": "int8", "quantization": quant,
                                        "check": _check(open_session(out / "model.int8.onnx", 2), model, batches)}
        elif (out / "model.int8.onnx").exists():
            (out / "model.int8.onnx").unlink()  # a stale int8 file would not match this export
    except CascadeError:
        raise
    except Exception as exc:
        raise ExportError(f"exporting {spec} to {out} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        raw.unlink(missing_ok=True)
    tok.save_pretrained(str(out))
    model.config.save_pretrained(str(out))
    meta = {
        "format": 1,
        "source": spec,
        "resolved": target,
        "exporter": f"torch.onnx.export (TorchScript), torch {torch.__version__}",
        "onnxruntime": onnxruntime.__version__,
        "opset": opset,
        "inputs": names,
        "output": "logits (one per pair; cascade uses the last column)",
        "max_length": max_length,
        "pad_token_id": int(tok.pad_token_id or 0),
        "fused_operators": fused,
        "check_tolerance_fp32": FP32_TOLERANCE,
        "files": files,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta
