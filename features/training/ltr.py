"""Training LightGBM lambdarank models on feature logs, and checking them by cross-validation.

Splits are by query (a query's candidates never straddle train and
validation), seeds are fixed, and the model is written as LightGBM text plus
JSON metadata: never a pickle.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import CascadeError
from cascade.plots import save_figure
from cascade.stages.ltr import MODEL_FORMAT
from features.logging import file_hash, read_log
from features.personal import additive_groups

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    # Measured on SciFact (docs/benchmarks.md): ~100 trees of 23 leaves keep scoring 200 candidates near a
    # millisecond with nDCG@10 within noise of larger ensembles.
    "learning_rate": 0.1,
    "num_leaves": 23,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambdarank_truncation_level": 30,
    "verbosity": -1,
    "num_threads": 2,
    "deterministic": True,
    "force_row_wise": True,
}


@dataclass
class LogData:
    names: list[str]
    meta: dict
    qids: np.ndarray
    doc_ids: np.ndarray
    labels: np.ndarray
    fusion_rank: np.ndarray
    x: np.ndarray

    def query_order(self) -> list[str]:
        _, first = np.unique(self.qids, return_index=True)
        return [self.qids[i] for i in sorted(first)]

    def subset(self, qids: set[str]) -> "LogData":
        m = np.isin(self.qids, list(qids))
        return LogData(self.names, self.meta, self.qids[m], self.doc_ids[m], self.labels[m], self.fusion_rank[m], self.x[m])

    def groups(self) -> np.ndarray:
        """Group sizes in row order (rows of a query are contiguous in a log)."""
        change = np.flatnonzero(self.qids[1:] != self.qids[:-1]) + 1
        bounds = np.concatenate([[0], change, [len(self.qids)]])
        return np.diff(bounds)


def load_logs(paths: list[Path]) -> LogData:
    meta, t = read_log(paths)
    names = meta["feature_names"]
    x = np.column_stack([t.column(n).to_numpy() for n in names]).astype(np.float32) if len(t) else np.zeros((0, len(names)))
    return LogData(names, meta, np.asarray(t.column("qid").to_pylist(), dtype=object),
                   np.asarray(t.column("doc_id").to_pylist(), dtype=object), t.column("label").to_numpy(),
                   t.column("fusion_rank").to_numpy(), x)


def label_gain(max_label: int) -> list[float]:
    return [float(2**i - 1) for i in range(max(max_label, 1) + 1)]


def ndcg_at(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean nDCG@k over queries with at least one relevant candidate (ideal from the candidates)."""
    out, start = [], 0
    for g in groups:
        s, y = scores[start:start + g], labels[start:start + g]
        start += g
        if (y > 0).sum() == 0:
            continue
        order = np.argsort(-s, kind="stable")[:k]
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        dcg = ((2.0 ** y[order] - 1) * disc[: len(order)]).sum()
        ideal = np.sort(y)[::-1][:k]
        idcg = ((2.0 ** ideal - 1) * disc[: len(ideal)]).sum()
        out.append(dcg / idcg)
    return float(np.mean(out)) if out else float("nan")


@dataclass
class TrainResult:
    folder: Path | None
    best_iteration: int
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)


def _fit(train: LogData, valid: LogData | None, params: dict, rounds: int, early_stopping: int):
    import lightgbm as lgb

    max_label = int(max(train.labels.max(initial=0), valid.labels.max(initial=0) if valid else 0))
    p = {**params, "label_gain": label_gain(max_label)}
    dtrain = lgb.Dataset(train.x, label=train.labels, group=train.groups(), feature_name=train.names, free_raw_data=False)
    callbacks = [lgb.log_evaluation(0)]
    valid_sets = []
    if valid is not None and len(valid.x):
        dvalid = lgb.Dataset(valid.x, label=valid.labels, group=valid.groups(), reference=dtrain)
        valid_sets = [dvalid]
        callbacks.append(lgb.early_stopping(early_stopping, verbose=False))
    booster = lgb.train(p, dtrain, num_boost_round=rounds, valid_sets=valid_sets, valid_names=["valid"][: len(valid_sets)],
                        callbacks=callbacks)
    return booster, p


def parse_monotone(specs: list[str], names: list[str]) -> list[int] | None:
    if not specs:
        return None
    out = [0] * len(names)
    for spec in specs:
        name, _, sign = spec.partition("=")
        if name not in names:
            raise CascadeError(f"--monotone {spec!r}: unknown feature {name!r}; features: {', '.join(names)}")
        if sign not in ("1", "+1", "-1", "0"):
            raise CascadeError(f"--monotone {spec!r}: direction must be 1, -1 or 0")
        out[names.index(name)] = int(sign)
    return out


def train_ltr(paths: list[Path], out: Path, *, valid_fraction: float = 0.2, seed: int = 13, rounds: int = 150,
              early_stopping: int = 50, monotone: list[str] | None = None, params: dict | None = None) -> TrainResult:
    """Train on the logs at ``paths`` and write ``out/model.txt``, ``out/model.json`` and ``out/importance.png``."""
    data = load_logs(paths)
    if not len(data.x):
        raise CascadeError("the feature logs are empty")
    if not (data.labels > 0).any():
        raise CascadeError("the feature logs hold no relevant candidate (all labels are 0): nothing to learn from")
    qids = data.query_order()
    rng = np.random.default_rng(seed)
    valid_q = set(rng.permutation(qids)[: int(round(len(qids) * valid_fraction))]) if valid_fraction > 0 else set()
    train, valid = data.subset(set(qids) - valid_q), (data.subset(valid_q) if valid_q else None)
    p = {**DEFAULT_PARAMS, **(params or {}), "seed": seed}
    additive = additive_groups(data.names)  # personal features: a separate additive term (features/personal.py)
    if additive and "interaction_constraints" not in p:
        p["interaction_constraints"] = additive
    mono = parse_monotone(monotone or [], data.names)
    if mono:
        p["monotone_constraints"] = mono
        p["monotone_constraints_method"] = "advanced"
    booster, p = _fit(train, valid, p, rounds, early_stopping)
    metrics = {"train_queries": len(qids) - len(valid_q), "valid_queries": len(valid_q)}
    if valid is not None:
        vs = booster.predict(valid.x, num_iteration=booster.best_iteration or None)
        metrics["valid_ndcg@10"] = ndcg_at(vs, valid.labels, valid.groups())
        metrics["valid_fusion_ndcg@10"] = ndcg_at(-valid.fusion_rank.astype(float), valid.labels, valid.groups())
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "model.txt"), num_iteration=booster.best_iteration or None)
    meta = {
        "format": MODEL_FORMAT,
        "features": {"names": data.names, "version": data.meta.get("feature_version"),
                     "fingerprint": data.meta.get("feature_fingerprint"), "index": data.meta.get("index"),
                     "keyword_source": data.meta.get("keyword_source"),
                     "keyword_analyzers": data.meta.get("keyword_analyzers")},
        "training_data": {"files": [str(p_) for p_ in paths], "sha256": file_hash(paths),
                          "rows": int(len(data.x)), "queries": len(qids), "source": data.meta.get("source")},
        "params": {k: v for k, v in p.items()},
        "best_iteration": int(booster.best_iteration or booster.current_iteration()),
        "metrics": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "lightgbm_version": __import__("lightgbm").__version__,
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    importance_plot(booster, data.names, out / "importance.png")
    return TrainResult(out, meta["best_iteration"], metrics, p)


def importance_plot(booster: Any, names: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gain = booster.feature_importance(importance_type="gain")
    order = np.argsort(gain)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    ax.barh([names[i] for i in order], gain[order] / max(gain.sum(), 1e-12), color="#1f77b4")
    ax.set_xlabel("share of total gain")
    ax.set_title("LTR feature importance (gain)")
    return save_figure(fig, path)


def _run(data: LogData, judged: dict, scores: np.ndarray) -> dict[str, dict[str, float]]:
    """A TREC-style run from logged candidates; a judged query without candidates scores 0, it is not dropped."""
    r: dict[str, dict[str, float]] = {}
    for q, d, v in zip(data.qids, data.doc_ids, scores):
        r.setdefault(q, {})[d] = float(v)
    for q in judged:
        r.setdefault(q, {"__none__": 0.0})
    return r


def cross_validate(paths: list[Path], qrels: dict[str, dict[str, int]], *, folds: int = 5, seed: int = 13,
                   rounds: int = 150, early_stopping: int = 50) -> list[dict[str, float]]:
    """Per fold: nDCG@10 of fusion's order and of the model's order on the held-out queries (full qrels)."""
    import ir_measures
    from ir_measures import nDCG

    data = load_logs(paths)
    qids = data.query_order()
    rng = np.random.default_rng(seed)
    perm = list(rng.permutation(qids))
    results = []
    for f in range(folds):
        test_q = set(perm[f::folds])
        rest = [q for q in perm if q not in test_q]
        valid_q = set(rest[: max(1, len(rest) // 5)])
        train, valid, test = data.subset(set(rest) - valid_q), data.subset(valid_q), data.subset(test_q)
        booster, _ = _fit(train, valid, {**DEFAULT_PARAMS, "seed": seed}, rounds, early_stopping)
        scores = booster.predict(test.x, num_iteration=booster.best_iteration or None)
        judged = {q: qrels[q] for q in test_q if q in qrels}

        m = nDCG @ 10
        results.append({
            "fold": f + 1, "queries": len(judged),
            "fusion_ndcg@10": float(ir_measures.calc_aggregate([m], judged, _run(test, judged, -test.fusion_rank.astype(float)))[m]),
            "ltr_ndcg@10": float(ir_measures.calc_aggregate([m], judged, _run(test, judged, scores))[m]),
        })
    return results
