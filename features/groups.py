"""Feature groups other than keyword: retrieval provenance, semantic, recency, document fields, query."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import numpy as np

from cascade.query import to_epoch_seconds
from connectors.analysis import analyze
from features.config import NumericFeature, RecencyFeatures

if TYPE_CHECKING:
    from features.context import FeatureContext


class RetrievalGroup:
    """Each retriever's score, reciprocal rank and a missing flag, and the fusion score.

    A retriever that did not return a candidate gives it the lowest score it
    returned for this query (below its cut-off, but on its own scale) and rank 0.
    """

    def __init__(self, retrievers: list[str]):
        self.retrievers = retrievers

    def names(self) -> list[str]:
        return [f"ret.{r}.{x}" for r in self.retrievers for x in ("score", "rr", "missing")] + ["ret.fusion"]

    def compute(self, ctx: "FeatureContext") -> np.ndarray:
        c = ctx.candidates
        n = len(c)
        cols = []
        for r in self.retrievers:
            scores = c.retriever_scores.get(r, np.full(n, np.nan))
            ranks = c.retriever_ranks.get(r, np.zeros(n, dtype=np.int32))
            missing = ranks == 0
            floor = np.nanmin(scores) if (~missing).any() else 0.0
            cols += [np.where(missing, floor, scores), np.where(missing, 0.0, 1.0 / np.maximum(ranks, 1)),
                     missing.astype(np.float64)]
        fusion = c.stage_scores.get("fusion", np.zeros(n))
        cols.append(np.nan_to_num(fusion, nan=0.0))
        return np.column_stack(cols)


class SemanticGroup:
    """Query/document cosine with the index's embedder (stored vectors where the backend has them)."""

    def names(self) -> list[str]:
        return ["sem.cosine"]

    def compute(self, ctx: "FeatureContext") -> np.ndarray:
        return ctx.source.cosines(ctx)[:, None]


def decay(distance_days: np.ndarray, cfg: RecencyFeatures) -> np.ndarray:
    """Elasticsearch's decay functions: 1 within ``offset``, ``decay_value`` at ``offset + scale``."""
    d = np.maximum(0.0, np.abs(distance_days) - cfg.offset_days)
    s, v = cfg.scale_days, cfg.decay_value
    if cfg.decay == "gauss":
        return np.exp(d**2 * np.log(v) / s**2)
    if cfg.decay == "exp":
        return np.exp(d * np.log(v) / s)
    return np.maximum(0.0, (s / (1.0 - v) - d) / (s / (1.0 - v)))


class RecencyGroup:
    """Age in days and its decayed value; a document without a date gets ``missing`` and a flag."""

    def __init__(self, cfg: RecencyFeatures):
        self.cfg = cfg
        self.now = to_epoch_seconds(cfg.now, "features.recency.now") if cfg.now else None

    def names(self) -> list[str]:
        return ["rec.age_days", "rec.decay", "rec.missing"]

    def compute(self, ctx: "FeatureContext") -> np.ndarray:
        now = self.now if self.now is not None else dt.datetime.now(dt.timezone.utc).timestamp()
        n = len(ctx.candidates)
        age = np.zeros(n)
        missing = np.ones(n)
        for i, doc in enumerate(ctx.candidates.fields):
            v = (doc or {}).get(self.cfg.field)
            if v not in (None, ""):
                try:
                    age[i] = (now - to_epoch_seconds(v, self.cfg.field)) / 86400.0
                    missing[i] = 0.0
                except Exception:  # an unparsable stored date is treated as no date
                    pass
        value = np.where(missing > 0, self.cfg.missing, decay(age, self.cfg))
        return np.column_stack([np.where(missing > 0, 0.0, age), value, missing])


class NumericGroup:
    """Numeric document fields (popularity, price, ...), log1p-scaled where asked, with a missing flag."""

    def __init__(self, specs: list[NumericFeature]):
        self.specs = specs

    def names(self) -> list[str]:
        return [n for s in self.specs for n in (f"num.{s.field}", f"num.{s.field}.missing")]

    def compute(self, ctx: "FeatureContext") -> np.ndarray:
        cols = []
        for s in self.specs:
            vals, miss = [], []
            for doc in ctx.candidates.fields:
                v = (doc or {}).get(s.field)
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                vals.append(float(v) if ok else s.missing)
                miss.append(0.0 if ok else 1.0)
            x = np.asarray(vals)
            if s.log:
                x = np.where(np.asarray(miss) > 0, x, np.log1p(np.maximum(x, 0.0)))
            cols += [x, np.asarray(miss)]
        return np.column_stack(cols) if cols else np.zeros((len(ctx.candidates), 0))


class QueryGroup:
    """Query length in analyzed terms and the number of candidates: context the model can condition on."""

    def __init__(self, analyzer_kind: str):
        self.kind = analyzer_kind

    def names(self) -> list[str]:
        return ["q.length", "q.candidates"]

    def compute(self, ctx: "FeatureContext") -> np.ndarray:
        n = len(ctx.candidates)
        return np.column_stack([np.full(n, float(len(analyze(self.kind, ctx.query.text)))), np.full(n, float(n))])
