"""Keyword features: exact per-field BM25 and query-term coverage, from the backend's global statistics.

A backend whose feature source has ``keyword_columns`` (OpenSearch: the
cluster's own BM25 and named-clause matches, see
:mod:`connectors.opensearch.features`) gives the same five columns per field
itself; the embedded backend's are computed here from its forward index.

BM25 here is the classic Lucene/tantivy form,
``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))`` with
``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, summed over query terms (a term
repeated in the query counts as often as it appears). Lucene 8+ drops the
constant ``(k1 + 1)``, which changes no ranking. Unlike an engine's own score,
document lengths are exact (not one-byte norms) and statistics are global, not
per shard, so the same document gets the same feature value wherever it lives.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from connectors.analysis import analyze

if TYPE_CHECKING:
    from features.context import FeatureContext

def idf(df: np.ndarray, num_docs: int) -> np.ndarray:
    return np.log1p((num_docs - df + 0.5) / (df + 0.5))


def bm25(tf: np.ndarray, dl: np.ndarray, df: np.ndarray, qtf: np.ndarray, num_docs: int, avgdl: float,
         k1: float, b: float) -> np.ndarray:
    """BM25 of each row of ``tf`` (documents x query terms); ``qtf`` weights repeated query terms."""
    if tf.shape[1] == 0:
        return np.zeros(tf.shape[0])
    norm = k1 * (1.0 - b + b * dl[:, None] / max(avgdl, 1e-9))
    per_term = idf(df, num_docs)[None, :] * tf * (k1 + 1.0) / np.maximum(tf + norm, 1e-12)
    return per_term @ qtf


def normalize_phrase(text: str) -> str:
    return " ".join(text.lower().split())


class KeywordGroup:
    """Per text field: bm25, coverage, idf_coverage, phrase (exact query string), log_length."""

    def __init__(self, fields: dict[str, str], k1: float, b: float):
        self.fields, self.k1, self.b = fields, k1, b  # field -> analyzer kind

    def names(self) -> list[str]:
        return [f"kw.{f}.{x}" for f in self.fields for x in ("bm25", "coverage", "idf_coverage", "phrase", "log_length")]

    def compute(self, ctx: "FeatureContext") -> np.ndarray:
        n = len(ctx.candidates)
        from_engine = getattr(ctx.source, "keyword_columns", None)
        if from_engine is not None:  # a backend that scores these itself (OpenSearch's feature queries)
            cols = [from_engine(ctx, field, kind) for field, kind in self.fields.items()]
            return np.hstack(cols) if cols else np.zeros((n, 0))
        cols = []
        phrase = normalize_phrase(ctx.query.text)
        for field, kind in self.fields.items():
            counts = Counter(analyze(kind, ctx.query.text))
            terms = list(counts)
            qtf = np.array([counts[t] for t in terms], dtype=np.float64)
            tf, dl, df, num_docs, avgdl = ctx.source.term_stats(ctx, field, kind, terms)
            score = bm25(tf, dl, df, qtf, num_docs, avgdl, self.k1, self.b)
            present = tf > 0
            cov = present.mean(axis=1) if terms else np.zeros(n)
            w = idf(df, num_docs) if terms else np.zeros(0)
            idf_cov = (present @ w) / w.sum() if terms and w.sum() > 0 else np.zeros(n)
            # A verbatim phrase implies every analyzed query term is present: only those candidates are read.
            ph = np.zeros(n)
            for i in np.flatnonzero(cov >= 1.0) if phrase else ():
                text = (ctx.candidates.fields[i] or {}).get(field) or ""
                ph[i] = 1.0 if phrase in normalize_phrase(str(text)) else 0.0
            cols += [score, cov, idf_cov, ph, np.log1p(dl)]
        return np.column_stack(cols) if cols else np.zeros((n, 0))
