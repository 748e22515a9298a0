"""Learning-to-rank stage: a LightGBM lambdarank model over the index's declared features.

It scores a few hundred candidates in about a millisecond, cheap enough to sit
between fusion and the cross-encoder and decide which few documents the
expensive model gets to see. The model is LightGBM's text format with a JSON
metadata file beside it; a model trained on another feature set is refused at
start-up, not discovered through bad rankings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from cascade.candidates import Candidates
from cascade.errors import ConfigError
from cascade.extras import require
from cascade.models.lookup import display_name, file_stamp
from features.provenance import keyword_analyzers
from cascade.stages.base import BuildContext, IndexView, Reranker, StageConfigBase

MODEL_FORMAT = "cascade-ltr/lightgbm-text/1"


class LTRConfig(StageConfigBase):
    cost_unit: ClassVar[str] = "rows"
    reads_features: ClassVar[bool] = True

    type: Literal["ltr"] = "ltr"
    model: str = Field(description="Model folder (model.txt + model.json): a path, or a name under "
                                   "CASCADE_TRAINED_DIR or CASCADE_MODELS_DIR.")

    def validate_index(self, index: IndexView, key: str) -> None:
        super().validate_index(index, key)
        if getattr(index, "features", None) is None:
            raise ValueError(f"{key}: an ltr stage needs a `features:` section declaring its feature set")

    def build(self, ctx: BuildContext) -> "LTRStage":
        where = ctx.file or f"{ctx.index.index}.yaml"
        key = f"{ctx.key}.model"
        folder = resolve_model_dir(self.model, ctx.settings)
        if folder is None:
            raise ConfigError(where, key, f"model {self.model!r} not found as a path, under "
                              f"{Path(ctx.settings.trained_dir).absolute()} or under "
                              f"{Path(ctx.settings.models_dir).absolute() if ctx.settings.models_dir else '(no CASCADE_MODELS_DIR)'}; "
                              f"train one with `cascade train ltr`")
        folder = folder.absolute()  # errors about the model name its files by full path
        model = ctx.shared(("ltr", str(folder.resolve()), file_stamp(folder)), lambda: LTRModel.load(folder))
        model.check_features(ctx.feature_names, where, key, ctx.keyword_source)
        if ctx.feature_names is not None:
            model.check_analyzers(keyword_analyzers(ctx.index, ctx.feature_names), where, key)
        return LTRStage(self, model)


def resolve_model_dir(spec: str, settings) -> Path | None:
    for p in (Path(spec).expanduser(), settings.trained_dir / spec,
              *( [settings.models_dir / spec] if settings.models_dir else [])):
        if (p / "model.json").is_file():
            return p
    return None


class LTRModel:
    def __init__(self, booster: Any, meta: dict, folder: Path):
        self.booster, self.meta, self.folder = booster, meta, folder
        self.feature_names: list[str] = meta["features"]["names"]

    @classmethod
    def load(cls, folder: Path) -> "LTRModel":
        lgb = require("lightgbm", "ltr", "an ltr stage")

        meta_path, model_path = folder / "model.json", folder / "model.txt"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(str(meta_path), "", f"cannot read model metadata: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            raise ConfigError(str(meta_path), "format", f"unknown model format {meta.get('format') if isinstance(meta, dict) else None!r}; "
                              f"expected {MODEL_FORMAT!r} (a model written by `cascade train ltr`)")
        if not isinstance(meta.get("features", {}).get("names"), list):
            raise ConfigError(str(meta_path), "features.names", "missing: the model does not say which features it takes")
        try:
            text = model_path.read_text(encoding="utf-8")
            booster = lgb.Booster(model_str=text)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(model_path), "", f"cannot read model: {exc}") from None
        except lgb.basic.LightGBMError as exc:
            raise ConfigError(str(model_path), "", f"not a valid LightGBM text model (corrupt or truncated?): {exc}") from None
        if booster.num_feature() != len(meta["features"]["names"]):
            raise ConfigError(str(model_path), "", f"model takes {booster.num_feature()} features but its metadata "
                              f"lists {len(meta['features']['names'])}")
        return cls(booster, meta, folder)

    @property
    def keyword_source(self) -> str | None:
        """Who computed the keyword features it was trained on (models from before this was recorded: the
        embedded backend, the only one that computed them)."""
        recorded = self.meta["features"].get("keyword_source")
        return recorded or ("embedded" if any(n.startswith("kw.") for n in self.feature_names) else None)

    def check_analyzers(self, index_analyzers: dict[str, str], where: str, key: str) -> None:
        """Refuse a model whose keyword features were made with other analyzers (when it recorded them)."""
        recorded = self.meta["features"].get("keyword_analyzers")
        if recorded is None:
            return
        changed = {f: (a, index_analyzers.get(f)) for f, a in recorded.items() if index_analyzers.get(f) != a}
        if changed:
            said = ", ".join(f"{f}: {a} then, {b} now" for f, (a, b) in sorted(changed.items()))
            raise ConfigError(where, key, f"model {self.folder} was trained on keyword features of other "
                              f"analyzers ({said}); log features again and retrain (`cascade features log`, "
                              f"`cascade train ltr`)")

    def check_features(self, index_names: list[str] | None, where: str, key: str,
                       keyword_source: str | None = None) -> None:
        if index_names is None:
            raise ConfigError(where, "features", "the ltr stage needs a `features:` section in the index config")
        mine = self.keyword_source
        if keyword_source and mine and keyword_source != mine and index_names == self.feature_names:
            # Same names, other values: the cluster's BM25 and analyzers are not cascade's.
            raise ConfigError(where, key, f"model {self.folder} was trained on keyword features computed by the "
                              f"{mine} backend; this index computes them on the {keyword_source} backend, where "
                              f"their values differ. Log features on this backend (`cascade features log`) and "
                              f"train again (`cascade train ltr`)")
        if index_names != self.feature_names:
            missing = [n for n in self.feature_names if n not in index_names]
            extra = [n for n in index_names if n not in self.feature_names]
            detail = (f"the model needs {missing[:5]} which the index does not compute; " if missing else "") + \
                     (f"the index computes {extra[:5]} which the model was not trained on; " if extra else "") + \
                     ("same names in another order; " if not missing and not extra else "")
            raise ConfigError(where, key, f"model {self.folder} was trained on feature set "
                              f"v{self.meta['features'].get('version')} ({len(self.feature_names)} features), the index "
                              f"declares {len(index_names)}: {detail}retrain with `cascade train ltr`")

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)


class LTRStage(Reranker):
    kind = "ltr"

    def __init__(self, cfg: LTRConfig, model: LTRModel):
        self.configure(cfg)
        self.cfg, self.model = cfg, model
        self._stamp = "ltr:" + hashlib.sha256(repr((str(model.folder), file_stamp(model.folder))).encode()).hexdigest()[:16]

    async def score(self, query, candidates: Candidates, deadline: float | None) -> np.ndarray:
        if candidates.features is None or candidates.feature_names != self.model.feature_names:
            raise RuntimeError("features were not computed for this query (see the features step in the trace)")
        if len(candidates) <= 512:  # about a millisecond: not worth a thread hop
            return self.model.predict(candidates.features)
        return await asyncio.to_thread(self.model.predict, candidates.features)

    def describe(self):
        # The model as the config names it: describe() is served publicly, folders stay in the logs.
        return {**super().describe(), "model": display_name(self.cfg.model), "features": len(self.model.feature_names)}

    def model_stamp(self) -> str | None:
        return self._stamp
