"""Fusing several retrievers' lists into one candidate set, keeping every retriever's score and rank.

RRF needs no score calibration and is the safe default; linear fusion over
normalized scores lets a tuned weight express that one retriever is better.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from cascade.candidates import Candidates, Hit, stable_order
from cascade.config import LinearConfig, RRFConfig


def _union(results: Mapping[str, Sequence[Hit]]) -> tuple[list[str], list[dict | None], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """All distinct ids in first-seen order (retriever order, then rank), with per-retriever columns."""
    pos: dict[str, int] = {}
    ids: list[str] = []
    fields: list[dict | None] = []
    for hits in results.values():
        for h in hits:
            if h.id not in pos:
                pos[h.id] = len(ids)
                ids.append(h.id)
                fields.append(h.fields)
            elif fields[pos[h.id]] is None and h.fields is not None:
                fields[pos[h.id]] = h.fields
    n = len(ids)
    scores, ranks = {}, {}
    for name, hits in results.items():
        s = np.full(n, np.nan)
        r = np.zeros(n, dtype=np.int32)
        for rank, h in enumerate(hits, start=1):
            i = pos[h.id]
            if r[i] == 0:  # a retriever listing a doc twice counts its best rank
                s[i], r[i] = h.score, rank
        scores[name], ranks[name] = s, r
    return ids, fields, scores, ranks


def normalize(scores: np.ndarray, method: str) -> np.ndarray:
    """Normalize the non-missing scores; missing (NaN) stays NaN."""
    out = np.full_like(scores, np.nan, dtype=np.float64)
    found = ~np.isnan(scores)
    if not found.any():
        return out
    v = scores[found].astype(np.float64)
    if method == "minmax":
        lo, hi = v.min(), v.max()
        out[found] = (v - lo) / (hi - lo) if hi > lo else 1.0
    elif method == "zscore":
        sd = v.std()
        out[found] = (v - v.mean()) / sd if sd > 0 else 0.0
    else:
        raise ValueError(f"unknown normalization {method!r}")
    return out


def fuse(results: Mapping[str, Sequence[Hit]], cfg: RRFConfig | LinearConfig) -> Candidates:
    """Fuse retriever results and keep the top ``cfg.keep`` (ties keep first-seen order)."""
    ids, fields, scores, ranks = _union(results)
    if not ids:
        return Candidates.empty()
    total = np.zeros(len(ids))
    for name in results:
        w = cfg.weights.get(name, 1.0)
        if isinstance(cfg, RRFConfig):
            r = ranks[name]
            total += np.where(r > 0, w / (cfg.k + np.maximum(r, 1)), 0.0)
        else:
            norm = normalize(scores[name], cfg.normalize)
            if cfg.normalize == "zscore":
                # A document a retriever did not return scores as that retriever's worst returned one.
                floor = np.nanmin(norm) if np.isfinite(norm).any() else 0.0
                norm = np.where(np.isnan(norm), floor, norm)
            else:
                norm = np.nan_to_num(norm, nan=0.0)
            total += w * norm
    cands = Candidates(ids=ids, fields=fields, score=total, retriever_scores=scores, retriever_ranks=ranks)
    cands.stage_scores["fusion"] = total
    return cands.take(stable_order(total)[: cfg.keep])
