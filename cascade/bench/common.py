"""What every benchmark shares: the result contract, candidate texts, the cross-encoder stage, percentiles."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from rich.table import Table

from cascade.candidates import Candidates
from cascade.controller import Cascade
from cascade.models.pair_encoding import fallback_scores
from cascade.query import Query


class BenchResult:
    """A benchmark's outcome: its terminal table(s) and its Markdown section for docs/benchmarks.md."""

    def table(self) -> Table:  # pragma: no cover - every result overrides
        raise NotImplementedError

    def tables(self) -> list[Table]:
        return [self.table()]

    def section(self) -> tuple[str, str]:  # pragma: no cover - every result overrides
        """(key, title) of the section in the Markdown report."""
        raise NotImplementedError

    def markdown(self, command: str, machine: str) -> str:  # pragma: no cover - every result overrides
        raise NotImplementedError


def head_lines(command: str, machine: str) -> list[str]:
    """The first lines of every benchmark section: the exact command and the machine."""
    return [f"Command: `{command}`  ", f"Machine: {machine}  "]


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def pair_stage(cascade: Cascade, last: bool = False) -> tuple[int, Any] | None:
    """(position, stage) of the first (or last) stage that scores (query, document) pairs, or None."""
    found = [(i, st) for i, st in enumerate(cascade.stages) if st.cost_unit == "pairs"]
    if not found:
        return None
    return found[-1] if last else found[0]


def pair_stage_config(stages: Sequence[Any]) -> Any | None:
    """The first stage config that scores pairs (what the backend and micro-batching benchmarks load)."""
    return next((st for st in stages if st.cost_unit == "pairs"), None)


async def fill_fields(cascade: Cascade, cands: Candidates, n: int) -> None:
    """Fetch the stored fields of the first ``n`` candidates that lack them (retrievers may return ids only)."""
    missing = [i for i in range(min(n, len(cands))) if cands.fields[i] is None]
    if missing and cascade.documents is not None:
        docs = await cascade.documents.fetch([cands.ids[i] for i in missing])
        for i, d in zip(missing, docs):
            cands.fields[i] = d


async def top_texts(cascade: Cascade, query: Query, fields: Sequence[str], depth: int) -> tuple[Candidates, list[str]]:
    """A validated query's fused candidates and the texts of its top ``depth`` (as a pair stage would read them)."""
    cands, _ = await cascade.candidates(query)
    await fill_fields(cascade, cands, depth)
    return cands, [cands.text(i, list(fields)) for i in range(min(depth, len(cands)))]


async def stage_scores(stage: Any, query: str, docs: list[str]) -> np.ndarray:
    """What a pair stage scores: its async scorer, NaN (unscorable documents) replaced by the stage's fallback."""
    if not docs:
        return np.zeros(0)
    raw = np.asarray(await stage.scorer.score(query, docs), dtype=np.float64)
    return fallback_scores(raw, np.isfinite(raw))


def runtime_scores(runtime: Any, query: str, docs: list[str]) -> np.ndarray:
    """A blocking runtime's scores with the stage's fallback for documents it could not score."""
    raw = np.asarray(runtime.score(query, docs), dtype=np.float64)
    return fallback_scores(raw, np.isfinite(raw))

