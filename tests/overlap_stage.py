"""A test-only stage type, to prove the stage contract: everything it needs is declared in this one file.

It scores a candidate by how many query terms its ``field`` contains, through a
pair scorer composed by the build context (so the pair-score cache and model
stamps apply to it as to the cross-encoder), and counts its cost in ``calls``,
a unit no built-in stage uses. Registered by the one line at the bottom; no
other module names it.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Literal

import numpy as np

from cascade.stages import BuildContext, Reranker, StageConfigBase, register_stage

CLOSED: list[str] = []  # names of stages whose close() ran


class OverlapRuntime:
    """A blocking 'model': query-term overlap; counts the pairs it scores."""

    def __init__(self, version: str):
        self.name, self.stamp = f"overlap-{version}", f"overlap:{version}"
        self.pairs = 0
        self.lock = threading.Lock()

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        terms = set(query.lower().split())
        with self.lock:
            self.pairs += len(docs)
        return np.array([float(len(terms & set(d.lower().split()))) if d else np.nan for d in docs])


class OverlapConfig(StageConfigBase):
    cost_unit: ClassVar[str] = "calls"
    pair_cacheable: ClassVar[bool] = True

    type: Literal["test_overlap"] = "test_overlap"
    field: str = "title"
    version: str = "v1"

    def text_fields(self) -> list[str]:
        return [self.field]

    def validate_index(self, index: Any, key: str) -> None:
        if index.fields.get(self.field) is None or index.fields[self.field].type != "text":
            raise ValueError(f"{key}.field: {self.field!r} is not a text field of index {index.index}")

    def build(self, ctx: BuildContext) -> "OverlapStage":
        scorer = ctx.scorer(("test_overlap", self.version), lambda: OverlapRuntime(self.version),
                            cacheable=self.pair_cacheable)
        return OverlapStage(self, scorer)


class OverlapStage(Reranker):
    def __init__(self, cfg: OverlapConfig, scorer: Any):
        self.configure(cfg)
        self.cfg, self.scorer = cfg, scorer

    async def score(self, query, candidates, deadline) -> np.ndarray:
        docs = [candidates.text(i, [self.cfg.field]) for i in range(len(candidates))]
        s = np.asarray(await self.scorer.score(query.text, docs, deadline), dtype=np.float64)
        return np.where(np.isfinite(s), s, -1.0)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.scorer.name}

    def model_stamp(self) -> str | None:
        return self.scorer.stamp

    async def close(self) -> None:
        CLOSED.append(self.name)


register_stage(OverlapConfig)
