"""The last ``cascade eval`` of each index and profile, kept where the workbench's evaluation view reads it.

``cascade eval`` (and ``cascade demo``) write every profile's report to
``EVALS_DIR/INDEX/PROFILE.json`` besides whatever ``--json`` asked for, so the
workbench can chart per-step nDCG@10, recall and latency without being told
where a run wrote its files. ``EVALS_DIR`` is ``CASCADE_EVALS_DIR``, by default
beside the indexes (``.cascade/evals``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from cascade.settings import Settings
from cascade.ui.files import write_atomic

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def evals_root(settings: Settings) -> Path:
    return Path(settings.evals_dir) if settings.evals_dir else Path(settings.index_dir).parent / "evals"


def _safe(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid index or profile name for a file")
    return name


def save_last_eval(report: Any, settings: Settings, command: str = "") -> Path:
    """Write ``report`` (an :class:`cascade.evaluation.EvalReport`) as the last eval of its index and profile."""
    data = report.as_json()
    data["saved_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    data["command"] = command
    path = evals_root(settings) / _safe(report.index) / f"{_safe(report.profile)}.json"
    write_atomic(path, json.dumps(data, indent=1))  # the service may be reading it meanwhile
    return path


def load_last_evals(index: str, settings: Settings) -> list[dict[str, Any]]:
    """Every saved eval of ``index``, one per profile, newest first; unreadable files are skipped."""
    try:
        folder = evals_root(settings) / _safe(index)
    except ValueError:
        return []
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("index") == index and isinstance(data.get("stages"), list):
            out.append(data)
    return sorted(out, key=lambda d: str(d.get("saved_at", "")), reverse=True)
