"""Click models that simulate users over judged rankings: position-based and cascade.

The parameters are the ones the online learning-to-rank literature uses
(Hofmann et al. 2011/2013; Oosterhuis and de Rijke), on a 0..4 grade scale:

| user          | P(click | grade 0..4)        | P(stop | click, grade 0..4) |
|---------------|-----------------------------|-----------------------------|
| perfect       | .00 .20 .40 .80 1.0         | 0 0 0 0 0                   |
| navigational  | .05 .30 .50 .70 .95         | .20 .30 .50 .70 .90         |
| informational | .40 .60 .70 .80 .90         | .10 .20 .30 .40 .50         |

A cascade user reads from the top, clicks with the grade's click probability
and, after a click, stops with the grade's stop probability. A position-based
user (``pbm``) examines rank ``k`` with probability ``(1/k)^eta`` and clicks an
examined document with ``epsilon + (1 - epsilon) * (2^g - 1) / 15``, so a
non-relevant one gets ``epsilon``. Binary labels map to the end grades (0 and 4);
other scales are stretched onto 0..4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

MAX_GRADE = 4


@dataclass(frozen=True)
class ClickModel:
    name: str
    kind: Literal["cascade", "pbm"]
    click: tuple[float, ...] = ()  # cascade: P(click | grade)
    stop: tuple[float, ...] = ()  # cascade: P(stop | click, grade)
    eta: float = 1.0  # pbm: examination (1/k)^eta
    epsilon: float = 0.1  # pbm: click noise on non-relevant documents

    def click_probability(self, grades: np.ndarray) -> np.ndarray:
        g = np.clip(np.asarray(grades, dtype=np.int64), 0, MAX_GRADE)
        if self.kind == "cascade":
            return np.asarray(self.click)[g]
        return self.epsilon + (1 - self.epsilon) * (2.0 ** g - 1) / (2.0 ** MAX_GRADE - 1)

    def examination(self, n: int) -> np.ndarray:
        """pbm: P(examined) of ranks 1..n (the propensities a debiasing method should recover)."""
        return (1.0 / np.arange(1, n + 1)) ** self.eta

    def simulate(self, grades: Sequence[int] | np.ndarray, rng: np.random.Generator) -> list[int]:
        """0-based positions this user clicks in a list with these grades, in the order clicked."""
        grades = np.asarray(grades, dtype=np.int64)
        n = len(grades)
        if n == 0:
            return []
        p = self.click_probability(grades)
        u = rng.random(2 * n)
        if self.kind == "pbm":
            exam = self.examination(n)
            return [int(i) for i in np.flatnonzero(u[:n] < exam * p)]
        stop = np.asarray(self.stop)[np.clip(grades, 0, MAX_GRADE)]
        out: list[int] = []
        for i in range(n):
            if u[i] < p[i]:
                out.append(i)
                if u[n + i] < stop[i]:
                    break
        return out


MODELS: dict[str, ClickModel] = {
    "perfect": ClickModel("perfect", "cascade", (0.0, 0.2, 0.4, 0.8, 1.0), (0.0, 0.0, 0.0, 0.0, 0.0)),
    "navigational": ClickModel("navigational", "cascade", (0.05, 0.3, 0.5, 0.7, 0.95), (0.2, 0.3, 0.5, 0.7, 0.9)),
    "informational": ClickModel("informational", "cascade", (0.4, 0.6, 0.7, 0.8, 0.9), (0.1, 0.2, 0.3, 0.4, 0.5)),
}


def model(name: str, *, eta: float = 1.0, epsilon: float = 0.1) -> ClickModel:
    """A click model by name: perfect, navigational, informational (cascade) or pbm."""
    if name == "pbm":
        return ClickModel("pbm", "pbm", eta=eta, epsilon=epsilon)
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown click model {name!r}; choose one of {sorted([*MODELS, 'pbm'])}") from None


def grade_scale(qrels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Judgments on the 0..4 scale the models use: binary labels to 0/4, other scales stretched and rounded."""
    top = max((g for docs in qrels.values() for g in docs.values()), default=1)
    out: dict[str, dict[str, int]] = {}
    for q, docs in qrels.items():
        if top <= 1:
            out[q] = {d: (MAX_GRADE if g > 0 else 0) for d, g in docs.items()}
        else:
            out[q] = {d: int(round(max(g, 0) * MAX_GRADE / top)) for d, g in docs.items()}
    return out
