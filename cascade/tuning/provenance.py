"""What a stage's model was trained on, so that tuning never scores a model on queries it learned from unawares.

An LTR model records its feature log's source (``dataset/split``) in its
``model.json``; a cross-encoder trained by ``cascade train cross-encoder``
records its recipe in ``cascade-training.json``, and a shipped model may have
a built-in recipe of the same name (``features/training/recipes``). A stage
whose model saw the tuning split is either cross-fitted (an LTR model is
retrained per fold, :mod:`cascade.tuning.crossfit`) or flagged: its gain there
is in-sample and overstated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

RECIPES = Path(__file__).resolve().parents[2] / "features" / "training" / "recipes"


def _recipe_splits(recipe: Any) -> list[tuple[str, str]]:
    out = []
    for spec in (recipe or {}).get("data") or []:
        if isinstance(spec, dict) and spec.get("dataset") and not spec.get("titles"):
            out.append((str(spec["dataset"]), str(spec.get("split", "train"))))
    return out


def trained_on(stage: Any) -> list[tuple[str, str]] | None:
    """(dataset, split) pairs whose judgments trained the stage's model; None when nothing says."""
    model = getattr(stage, "model", None)
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict):  # an LTR model
        src = (meta.get("training_data") or {}).get("source")
        if isinstance(src, str) and "/" in src:
            ds, split = src.split("/", 1)
            return [(ds, split)]
        return None
    cfg = getattr(stage, "cfg", None)
    name = getattr(cfg, "model", None)
    if not isinstance(name, str):
        return None
    scorer = getattr(stage, "scorer", None)
    folder = Path(str(getattr(scorer, "name", "") or name))  # a local model's scorer is named by its folder
    record = folder / "cascade-training.json"
    if record.is_file():
        try:
            return _recipe_splits(json.loads(record.read_text(encoding="utf-8")).get("recipe"))
        except (OSError, json.JSONDecodeError):
            return None
    built_in = RECIPES / f"{Path(name).name}.yaml"
    if built_in.is_file():
        return _recipe_splits(yaml.safe_load(built_in.read_text(encoding="utf-8")))
    return None


def saw(stage: Any, dataset: str, split: str | None) -> bool:
    """Whether the stage's model was trained on ``dataset``'s judgments of ``split`` (any split when None)."""
    seen = trained_on(stage) or []
    return any(d == dataset and (split is None or s == split) for d, s in seen)
