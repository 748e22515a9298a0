"""The candidate set that flows through a cascade, stored by column.

Stages score whole arrays at once (LightGBM, a cross-encoder batch), so scores,
retriever provenance and features live in numpy arrays aligned with ``ids``;
reordering or cutting is one fancy-index per column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Hit:
    """One retriever result. ``fields`` is None when the retriever did not return the document's fields."""

    id: str
    score: float
    fields: dict[str, Any] | None = None


@dataclass
class Candidates:
    ids: list[str]
    fields: list[dict[str, Any] | None]
    score: np.ndarray  # the current ordering score (fusion, then each stage's)
    retriever_scores: dict[str, np.ndarray] = field(default_factory=dict)  # NaN: not found by that retriever
    retriever_ranks: dict[str, np.ndarray] = field(default_factory=dict)  # 1-based; 0: not found
    stage_scores: dict[str, np.ndarray] = field(default_factory=dict)  # NaN: not scored by that stage
    features: np.ndarray | None = None  # (n, len(feature_names)) float32
    feature_names: list[str] = field(default_factory=list)
    scored: dict[str, int] = field(default_factory=dict)  # per stage: how many candidates it scored (before any cut)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> "Candidates":
        return cls(ids=[], fields=[], score=np.zeros(0))

    def take(self, idx: Sequence[int] | np.ndarray) -> "Candidates":
        """A new set holding rows ``idx`` in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return Candidates(
            ids=[self.ids[i] for i in idx],
            fields=[self.fields[i] for i in idx],
            score=self.score[idx],
            retriever_scores={k: v[idx] for k, v in self.retriever_scores.items()},
            retriever_ranks={k: v[idx] for k, v in self.retriever_ranks.items()},
            stage_scores={k: v[idx] for k, v in self.stage_scores.items()},
            features=None if self.features is None else self.features[idx],
            feature_names=list(self.feature_names),
            scored=dict(self.scored),
        )

    def concat(self, tail: "Candidates") -> "Candidates":
        """This set followed by ``tail`` (columns one side lacks are NaN / 0 there)."""
        if not len(tail):
            return self
        n1, n2 = len(self), len(tail)

        def cols(a: dict, b: dict, fill) -> dict:
            return {k: np.concatenate([a.get(k, np.full(n1, fill)), b.get(k, np.full(n2, fill))]) for k in {*a, *b}}

        same_features = self.features is not None and tail.features is not None and self.feature_names == tail.feature_names
        return Candidates(
            ids=self.ids + tail.ids, fields=self.fields + tail.fields, score=np.concatenate([self.score, tail.score]),
            retriever_scores=cols(self.retriever_scores, tail.retriever_scores, np.nan),
            retriever_ranks={k: v.astype(np.int32) for k, v in cols(self.retriever_ranks, tail.retriever_ranks, 0).items()},
            stage_scores=cols(self.stage_scores, tail.stage_scores, np.nan),
            features=np.vstack([self.features, tail.features]) if same_features else None,
            feature_names=list(self.feature_names) if same_features else [],
            scored={**tail.scored, **self.scored},
        )

    def head(self, n: int | None) -> "Candidates":
        return self if n is None or n >= len(self) else self.take(np.arange(n))

    def provenance(self, i: int) -> dict[str, dict[str, float | int]]:
        """Which retrievers found candidate ``i``, with their score and rank."""
        out = {}
        for name, ranks in self.retriever_ranks.items():
            if ranks[i] > 0:
                out[name] = {"score": float(self.retriever_scores[name][i]), "rank": int(ranks[i])}
        return out

    def text(self, i: int, fields: Sequence[str], sep: str = " ") -> str:
        """The named fields of candidate ``i`` joined into one string (missing fields are skipped)."""
        doc = self.fields[i] or {}
        parts = [doc.get(f) for f in fields]
        return sep.join(str(p) for p in parts if p not in (None, ""))


def stable_order(scores: np.ndarray) -> np.ndarray:
    """Indices sorting ``scores`` descending; ties keep the incoming order, NaN sorts last."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    return np.argsort(-s, kind="stable")
