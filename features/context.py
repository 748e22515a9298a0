"""What feature groups see: the per-call context and the data source protocol.

Kept apart from ``features.extractor`` so that the groups (``features.groups``,
``features.keyword``) can name these types without importing the extractor,
which itself imports the groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from cascade.candidates import Candidates
    from cascade.query import Query


class FeatureSource(Protocol):
    """What a backend provides for features: term statistics and query/document cosines."""

    def term_stats(self, ctx: "FeatureContext", field: str, kind: str, terms: list[str]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
        """(tf [n x terms], doc lengths [n], df [terms], number of docs, average length) for ``field``."""
        ...

    def cosines(self, ctx: "FeatureContext") -> np.ndarray: ...


@dataclass
class FeatureContext:
    query: "Query"
    candidates: "Candidates"
    source: FeatureSource
    memo: dict = field(default_factory=dict)  # per-call scratch space shared by groups (e.g. backend rows)
