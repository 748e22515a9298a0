"""Cross-fitting an LTR stage whose model was trained on the queries being tuned on.

Scoring training queries with a model fitted on them flatters it (SciFact's
LTR model saw 80% of SciFact train). Instead, each fold of queries is scored
by a model retrained on the other folds with the deployed model's own
recorded parameters and number of trees: every score tuning reads is then
out of sample for its query, while the deployed model stays what it is.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class FoldModels:
    """One LightGBM booster per fold; :meth:`predict` scores a query's rows with the model that never saw it."""

    def __init__(self, boosters: list[Any], fold_of: dict[str, int]):
        self.boosters, self.fold_of = boosters, fold_of

    def predict(self, qid: str, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.boosters[self.fold_of[qid]].predict(x, num_threads=1), dtype=np.float64)


def fit_folds(model_meta: dict, folds: Sequence[Sequence[str]], rows: dict[str, tuple[np.ndarray, np.ndarray]],
              feature_names: list[str]) -> FoldModels:
    """Retrain per fold: ``rows[qid] = (features, labels)`` of the query's candidates (current fusion)."""
    import lightgbm as lgb

    params = {k: v for k, v in dict(model_meta.get("params") or {}).items()
              if k not in ("label_gain", "early_stopping_round", "early_stopping_rounds")}
    rounds = int(model_meta.get("best_iteration") or 100)
    max_label = max((int(y.max(initial=0)) for _, y in rows.values()), default=1)
    params["label_gain"] = [float(2**i - 1) for i in range(max(max_label, 1) + 1)]
    params.setdefault("objective", "lambdarank")
    params["verbosity"] = -1
    fold_of = {q: f for f, qs in enumerate(folds) for q in qs}
    boosters = []
    for f in range(len(folds)):
        train = [q for q in rows if fold_of.get(q, -1) != f and len(rows[q][1])]
        x = np.vstack([rows[q][0] for q in train]).astype(np.float32)
        y = np.concatenate([rows[q][1] for q in train])
        group = [len(rows[q][1]) for q in train]
        ds = lgb.Dataset(x, label=y, group=group, feature_name=list(feature_names), free_raw_data=True)
        boosters.append(lgb.train(params, ds, num_boost_round=rounds))
    return FoldModels(boosters, fold_of)
