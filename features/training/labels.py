"""Relevance labels from clicks: position bias estimated from the logs, then propensity-weighted click rates.

A click says "examined and found attractive", and how often a result is
examined depends on where it was shown. Under the position-based model
(``P(click) = p_rank * r(q, d)``), the click-through rate of a document mixes
its relevance ``r`` with the propensity ``p`` of the ranks it happened to be
shown at; labels from raw CTR reward what the current ranker already put on
top. This module estimates the propensities and divides them out.

Propensities (relative to rank 1, which the position-based model cannot tell
apart from a scale on relevance):

- ``randpair``: result randomization (an experiment's ``randomize: {method:
  randpair}`` swaps one random adjacent pair ``(k, k+1)`` on a share of
  impressions, recorded in the query log). The same documents seen at ``k``
  and ``k+1`` give ``p[k+1] / p[k] = (A + D) / (B + C)``, where ``A``/``B`` are
  the click rates at ``k+1``/``k`` of impressions that swapped that pair and
  ``C``/``D`` those at ``k``/``k+1`` of the randomized arm's unswapped ones
  (each side averages the relevance of the same two documents, so it cancels);
  ratios are chained from rank 1. Unbiased by design, but it needs traffic:
  the variance of deep ranks grows with the chain (Joachims et al. 2017; Wang
  et al. 2018).
- ``harvest`` (the default): intervention harvesting (Agarwal et al., WSDM
  2019) over every randomized rank change in the log: RandPair swaps, and A/B
  arms that rank the same query differently (users are assigned to arms at
  random, so an arm is an intervention too). A (query, document) shown at
  several ranks was clicked ``c_k`` of ``n_k`` times at each; given its total
  clicks, how they split across ranks depends on ``n_k * p_k`` alone, not on
  its relevance, so a conditional likelihood over all such documents gives the
  propensities with no relevance parameter to fit (no incidental-parameter
  bias, unlike ``em``).
- ``em``: maximum likelihood of the position-based model by EM with one
  relevance per (query, document) (Chuklin et al. 2015): identified wherever
  the same document was shown at several ranks (randomized swaps, A/B arms
  ranking differently, rankers that changed over time).
- ``regression-em``: Wang et al. (WSDM 2018): the EM's relevance is a function
  of the LTR features, refitted at each M-step (LightGBM on the posterior
  relevance, cross-entropy), so documents seen at only one rank still inform
  the propensities through documents like them. Needs a feature log of the
  logged queries.

Labels per (query, document) with at least ``min_impressions``:
``(clicks + m * mu) / (sum of weights + m)``: the smoothed ratio of clicks to
expected examinations (a Beta-style prior of strength ``m`` around the
global rate ``mu``), graded by thresholds. By default the thresholds sit
above the noise floor: users click non-relevant results too (the click
models' ``epsilon``), so the median pair's estimate, what a typical shown
document gets, is grade 0 and grades 1..4 split the range from there to 1
evenly (absolute thresholds with ``grades``). The weights are the estimated
propensities (``ipw``), ``ctr_k / ctr_1`` (``coec``, clicks over expected
clicks as OpenSearch's Search Relevance Workbench computes it: the CTR curve
also carries the ranker's own relevance, so it under-corrects), or 1 (``ctr``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np

from cascade.errors import CascadeError
from cascade.text import normalize_query

Estimator = Literal["harvest", "randpair", "em", "regression-em"]
LabelMethod = Literal["ipw", "coec", "ctr"]
GRADE_STEPS = (0.2, 0.4, 0.6, 0.8)  # grades 1..4 start this far from the noise floor toward 1


# ---------------------------------------------------------------- the log


@dataclass
class ClickLog:
    """Impressions and clicks as rows (one per document shown), and the (query, document) pairs they name.

    ``swap`` per impression: -1 not randomized, 0 randomized but left as ranked (a control), ``k`` the pair
    ``(k, k+1)`` (1-based) that was swapped.
    """

    queries: list[str]  # query text by query index
    pairs: list[tuple[int, str]]  # (query index, document id) by pair index
    row_pair: np.ndarray  # int, per row
    row_rank: np.ndarray  # int, 1-based rank shown
    row_click: np.ndarray  # 0/1
    row_imp: np.ndarray  # impression index of the row
    swap: np.ndarray  # per impression (see above)
    imp_query: np.ndarray  # query index per impression
    arms: list[str | None] = field(default_factory=list)  # per impression
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def impressions(self) -> int:
        return len(self.swap)

    @property
    def clicks(self) -> int:
        return int(self.row_click.sum())

    def pair_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(impressions, clicks) per pair."""
        n = len(self.pairs)
        return (np.bincount(self.row_pair, minlength=n).astype(np.float64),
                np.bincount(self.row_pair, weights=self.row_click, minlength=n))

    def ctr_by_rank(self, depth: int) -> np.ndarray:
        k = np.clip(self.row_rank, 1, depth + 1) - 1
        shown = np.bincount(k, minlength=depth + 1)[:depth].astype(np.float64)
        clicked = np.bincount(k, weights=self.row_click, minlength=depth + 1)[:depth]
        return np.divide(clicked, shown, out=np.zeros(depth), where=shown > 0)


class LogBuilder:
    """Joins logged searches (``hits`` shown, ``offset``, ``randomized``) with their click and impression events."""

    def __init__(self, index: str | None = None):
        self.index = index
        self.searches: dict[str, dict[str, Any]] = {}
        self.clicked: dict[str, set[str]] = {}
        self.seen: dict[str, set[str]] = {}  # impression events, when the client sends them
        self.event_ids: set[str] = set()
        self.skipped = {"other_index": 0, "duplicate_events": 0, "orphan_events": 0, "unattributed_clicks": 0}

    def add_search(self, rec: Mapping[str, Any]) -> None:
        if self.index is not None and rec.get("index") not in (None, self.index):
            self.skipped["other_index"] += 1
            return
        if not rec.get("query_id") or not rec.get("user_query"):
            return
        self.searches[str(rec["query_id"])] = {
            "text": normalize_query(str(rec["user_query"])), "hits": [str(h) for h in rec.get("hits") or []],
            "offset": int(rec.get("offset") or 0), "randomized": rec.get("randomized"),
            "arm": (rec.get("experiment") or {}).get("arm") or rec.get("profile"), "user": rec.get("user_id")}

    def add_event(self, rec: Mapping[str, Any]) -> None:
        action = str(rec.get("action_name") or "").lower()
        if action not in ("click", "impression"):
            return
        eid = rec.get("event_id")
        if eid is not None:
            if eid in self.event_ids:
                self.skipped["duplicate_events"] += 1
                return
            self.event_ids.add(eid)
        attrs = rec.get("event_attributes") or {}
        doc = (attrs.get("object") or {}).get("object_id")
        ordinal = (attrs.get("position") or {}).get("ordinal")
        qid = str(rec.get("query_id") or "")
        (self.clicked if action == "click" else self.seen).setdefault(qid, set()).add(
            str(doc) if doc is not None else f"#{ordinal}")

    def build(self) -> ClickLog:
        q_index: dict[str, int] = {}
        p_index: dict[tuple[int, str], int] = {}
        pair_l, rank_l, click_l, imp_l, swaps, arms, imp_q = [], [], [], [], [], [], []
        for qid in set(self.clicked) - set(self.searches):
            self.skipped["orphan_events"] += 1
        for qid, s in self.searches.items():
            hits, off = s["hits"], s["offset"]
            if not hits:
                continue
            clicked = self.clicked.get(qid, set())
            resolved = {d if not d.startswith("#") else _at(hits, d, off) for d in clicked}
            self.skipped["unattributed_clicks"] += len({d for d in resolved if d not in hits})
            seen = self.seen.get(qid)
            shown_docs = {d if not d.startswith("#") else _at(hits, d, off) for d in seen} if seen else None
            qi = q_index.setdefault(s["text"], len(q_index))
            imp = len(swaps)
            for pos, doc in enumerate(hits):
                if shown_docs is not None and doc not in shown_docs and doc not in resolved:
                    continue
                pair_l.append(p_index.setdefault((qi, doc), len(p_index)))
                rank_l.append(off + pos + 1)
                click_l.append(1 if doc in resolved else 0)
                imp_l.append(imp)
            rnd = s["randomized"] or None
            swap = -1
            if isinstance(rnd, dict):
                pair = rnd.get("swap")
                swap = int(pair[0]) if isinstance(pair, (list, tuple)) and pair else 0
            swaps.append(swap)
            arms.append(s["arm"])
            imp_q.append(qi)
        queries = [""] * len(q_index)
        for text, i in q_index.items():
            queries[i] = text
        pairs: list[tuple[int, str]] = [("", "")] * len(p_index)  # type: ignore[list-item]
        for key, i in p_index.items():
            pairs[i] = key
        return ClickLog(queries, pairs, np.asarray(pair_l, dtype=np.int64), np.asarray(rank_l, dtype=np.int64),
                        np.asarray(click_l, dtype=np.float64), np.asarray(imp_l, dtype=np.int64),
                        np.asarray(swaps, dtype=np.int64), np.asarray(imp_q, dtype=np.int64), arms,
                        dict(self.skipped))


def without_queries(log: ClickLog, texts: set[str]) -> ClickLog:
    """The log less every impression of these query texts (indexes of queries and pairs are kept)."""
    drop = np.array([q in texts for q in log.queries], dtype=bool)
    keep_imp = ~drop[log.imp_query]
    new_index = np.cumsum(keep_imp) - 1
    rows = keep_imp[log.row_imp]
    return ClickLog(log.queries, log.pairs, log.row_pair[rows], log.row_rank[rows], log.row_click[rows],
                    new_index[log.row_imp[rows]], log.swap[keep_imp], log.imp_query[keep_imp],
                    [a for a, k in zip(log.arms, keep_imp) if k], dict(log.skipped))


def pair_features(log: ClickLog, path: Path, ids: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Each logged pair's LTR features from a feature log (rows by query id and document id), and whether it
    had a row. Retrieval features (``ret.*``: scores and ranks of the rankers that made the logged lists) are
    left out: regression EM must not explain position by features that encode it."""
    from features.training.ltr import load_logs

    data = load_logs([path])
    cols = [j for j, name in enumerate(data.names) if not name.startswith("ret.")]
    row = {(q, d): i for i, (q, d) in enumerate(zip(data.qids, data.doc_ids))}
    x = np.zeros((len(log.pairs), len(cols)), dtype=np.float32)
    has = np.zeros(len(log.pairs), dtype=bool)
    for i, (qi, doc) in enumerate(log.pairs):
        j = row.get((query_id_of(log.queries[qi], ids), doc))
        if j is not None:
            x[i], has[i] = data.x[j, cols], True
    return x, has


def _at(hits: list[str], ordinal: str, offset: int) -> str:
    try:
        i = int(ordinal[1:]) - 1 - offset
    except ValueError:
        return ordinal
    return hits[i] if 0 <= i < len(hits) else ordinal


async def read_stream(url: str, index: str | None = None, on_progress: Callable[[int], None] | None = None) -> ClickLog:
    """The click log of the event stream in Redis (what ``cascade serve`` logged)."""
    from connectors.events import connect, iterate

    b = LogBuilder(index)
    client = connect(url)
    try:
        n = 0
        async for _, kind, rec in iterate(client):
            (b.add_search if kind == "q" else b.add_event)(rec)
            n += 1
            if on_progress and n % 5000 == 0:
                on_progress(n)
    finally:
        await client.aclose()
    return b.build()


def read_ubi(folder: Path, index: str | None = None) -> ClickLog:
    """The click log of a UBI export (``ubi_queries.ndjson`` and ``ubi_events.ndjson``: ``cascade experiments
    export-ubi``, or documents of OpenSearch's UBI indexes, one JSON document per line, ``_bulk`` action lines
    skipped)."""
    b = LogBuilder(index)
    for name, add in (("ubi_queries.ndjson", "q"), ("ubi_events.ndjson", "e")):
        path = folder / name
        if not path.is_file():
            raise CascadeError(f"--events {folder}: no {name} there (a folder of UBI exports, or a Redis URL)")
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    raise CascadeError(f"{path}:{n}: not JSON") from None
                if not isinstance(doc, dict) or set(doc) <= {"index", "create"}:
                    continue  # a _bulk action line
                if add == "q":
                    attrs = doc.get("query_attributes") or {}
                    b.add_search({"query_id": doc.get("query_id"), "user_query": doc.get("user_query"),
                                  "hits": doc.get("query_response_hit_ids"), "index": attrs.get("index"),
                                  "offset": attrs.get("offset"), "randomized": attrs.get("randomized"),
                                  "experiment": {"arm": attrs.get("arm")}, "profile": attrs.get("profile"),
                                  "user_id": attrs.get("user_id") or doc.get("client_id")})
                else:
                    b.add_event(doc)
    return b.build()


# ---------------------------------------------------------------- propensities


@dataclass
class Propensities:
    """Examination probability per rank 1..depth, relative to rank 1, and how it was estimated."""

    method: str
    values: np.ndarray
    detail: dict[str, Any] = field(default_factory=dict)

    def at(self, ranks: np.ndarray, clip: float = 0.0) -> np.ndarray:
        """The propensity of each rank (ranks beyond ``depth`` get the deepest one), at least ``clip``."""
        k = np.clip(ranks, 1, len(self.values)) - 1
        return np.maximum(self.values[k], clip)

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "propensities": [round(float(v), 5) for v in self.values], **self.detail}


def randpair(log: ClickLog, depth: int) -> Propensities:
    """Propensities from impressions whose adjacent pair ``(k, k+1)`` was swapped, against the unswapped ones."""
    imp_swap = log.swap[log.row_imp]
    control = imp_swap == 0
    n_control = int((log.swap == 0).sum())
    ratios, used = np.ones(depth - 1), []
    for k in range(1, depth):
        sw = imp_swap == k
        n_sw = int((log.swap == k).sum())
        if n_sw == 0 or n_control == 0:
            raise CascadeError(f"randpair: no impression swapped ranks {k} and {k + 1} (or none left as ranked); "
                               f"turn on an experiment's `randomize` with a depth of at least {depth}, or use "
                               f"--propensity em")
        a = log.row_click[sw & (log.row_rank == k + 1)].sum() / n_sw  # document from k, shown at k+1
        b = log.row_click[sw & (log.row_rank == k)].sum() / n_sw  # document from k+1, shown at k
        c = log.row_click[control & (log.row_rank == k)].sum() / n_control
        d = log.row_click[control & (log.row_rank == k + 1)].sum() / n_control
        if b + c <= 0 or a + d <= 0:
            raise CascadeError(f"randpair: no click at rank {k if b + c <= 0 else k + 1} among impressions with "
                               f"or without the ({k}, {k + 1}) swap; not enough traffic for this depth")
        ratios[k - 1] = (a + d) / (b + c)
        used.append(n_sw)
    values = np.concatenate([[1.0], np.cumprod(ratios)])
    return Propensities("randpair", values, {"swapped_impressions": used, "control_impressions": n_control})


def harvest(log: ClickLog, depth: int) -> Propensities:
    """Propensities from (query, document) pairs shown at two or more ranks, by conditional maximum likelihood.

    Given how often a document was clicked in all, which ranks those clicks fell on depends on how often it was
    shown at each rank and on their propensities, not on its relevance: the conditional log-likelihood
    ``sum_k c_k log(n_k p_k) - C log(sum_k n_k p_k)`` (summed over documents) has no relevance parameter and is
    concave in ``log p``. Its score equations are linear in the clicks, so the estimate stays consistent for
    binomial clicks too.
    """
    from scipy.optimize import minimize

    rank = np.clip(log.row_rank, 1, depth)
    cells, inv = np.unique(log.row_pair * (depth + 1) + rank, return_inverse=True)
    n = np.bincount(inv).astype(np.float64)
    c = np.bincount(inv, weights=log.row_click)
    pair, rk = cells // (depth + 1), cells % (depth + 1) - 1
    _, owner, ranks_of = np.unique(pair, return_inverse=True, return_counts=True)
    total = np.bincount(owner, weights=c)
    keep = (ranks_of[owner] >= 2) & (total[owner] > 0)  # other documents carry no information here
    n, c, rk = n[keep], c[keep], rk[keep]
    _, owner = np.unique(owner[keep], return_inverse=True)
    clicks = np.bincount(owner, weights=c)
    covered = set(rk[c > 0].tolist())
    missing = [k + 1 for k in range(depth) if k not in covered]
    if missing:
        raise CascadeError(f"harvest: no (query, document) was clicked at rank(s) {missing} and also shown at "
                           f"another rank; randomize results (an experiment's `randomize`), compare rankers, or "
                           f"use a smaller --depth")

    def negative(theta_rest: np.ndarray) -> tuple[float, np.ndarray]:
        theta = np.concatenate([[0.0], theta_rest])
        e = n * np.exp(theta[rk])
        s = np.bincount(owner, weights=e)
        value = float((c * theta[rk]).sum() - (clicks * np.log(s)).sum())
        expected = e / s[owner] * clicks[owner]
        grad = np.bincount(rk, weights=c, minlength=depth) - np.bincount(rk, weights=expected, minlength=depth)
        return -value, -grad[1:]

    res = minimize(negative, np.zeros(depth - 1), jac=True, method="L-BFGS-B")
    values = np.exp(np.concatenate([[0.0], res.x]))
    return Propensities("harvest", values, {"pairs_at_several_ranks": int(len(clicks)), "converged": bool(res.success)})


def _pbm_posteriors(theta_row: np.ndarray, gamma_row: np.ndarray, click: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(examined | click) and P(relevant | click) under the position-based model."""
    denom = np.maximum(1.0 - theta_row * gamma_row, 1e-12)
    exam = np.where(click > 0, 1.0, theta_row * (1.0 - gamma_row) / denom)
    rel = np.where(click > 0, 1.0, (1.0 - theta_row) * gamma_row / denom)
    return exam, rel


def em(log: ClickLog, depth: int, *, iterations: int = 200, tol: float = 1e-7) -> Propensities:
    """Position-based model fitted by EM with one relevance per (query, document)."""
    rank = np.clip(log.row_rank, 1, depth) - 1
    n_rank = np.bincount(rank, minlength=depth).astype(np.float64)
    n_pair = np.bincount(log.row_pair, minlength=len(log.pairs)).astype(np.float64)
    theta = np.full(depth, 0.5)
    gamma = np.full(len(log.pairs), 0.5)
    it = 0
    for it in range(1, iterations + 1):
        exam, rel = _pbm_posteriors(theta[rank], gamma[log.row_pair], log.row_click)
        new_theta = np.bincount(rank, weights=exam, minlength=depth) / np.maximum(n_rank, 1)
        gamma = np.bincount(log.row_pair, weights=rel, minlength=len(log.pairs)) / np.maximum(n_pair, 1)
        done = np.max(np.abs(new_theta - theta)) < tol
        theta = new_theta
        if done:
            break
    return Propensities("em", theta / theta[0], {"iterations": it, "theta_rank1": round(float(theta[0]), 5)})


def regression_em(log: ClickLog, depth: int, features: np.ndarray, has: np.ndarray, *, iterations: int = 30,
                  trees: int = 40, seed: int = 13, tol: float = 1e-5) -> Propensities:
    """Regression EM (Wang et al. 2018): relevance ``sigmoid(f(x))`` with ``f`` a GBDT refitted on the posterior
    relevance at every M-step. ``features[i]`` are pair ``i``'s LTR features; rows of pairs without (``has``
    false) are left out."""
    import lightgbm as lgb

    keep = has[log.row_pair]
    if keep.sum() == 0:
        raise CascadeError("regression-em: no logged (query, document) pair has features in the feature log")
    rank = np.clip(log.row_rank[keep], 1, depth) - 1
    pair = log.row_pair[keep]
    click = log.row_click[keep]
    used = np.unique(pair)
    local = np.full(len(log.pairs), -1)
    local[used] = np.arange(len(used))
    row_local = local[pair]
    x = features[used]
    n_rank = np.bincount(rank, minlength=depth).astype(np.float64)
    n_pair = np.bincount(row_local, minlength=len(used)).astype(np.float64)
    theta = np.full(depth, 0.5)
    gamma = np.full(len(used), 0.5)
    params = {"objective": "cross_entropy", "learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 20,
              "verbosity": -1, "num_threads": 2, "seed": seed, "deterministic": True, "force_row_wise": True}
    it = 0
    for it in range(1, iterations + 1):
        exam, rel = _pbm_posteriors(theta[rank], gamma[row_local], click)
        new_theta = np.bincount(rank, weights=exam, minlength=depth) / np.maximum(n_rank, 1)
        target = np.bincount(row_local, weights=rel, minlength=len(used)) / np.maximum(n_pair, 1)
        booster = lgb.train(params, lgb.Dataset(x, label=np.clip(target, 0, 1), weight=n_pair), num_boost_round=trees)
        gamma = np.clip(booster.predict(x), 1e-4, 1 - 1e-4)
        done = np.max(np.abs(new_theta - theta)) < tol
        theta = new_theta
        if done:
            break
    return Propensities("regression-em", theta / theta[0],
                        {"iterations": it, "theta_rank1": round(float(theta[0]), 5), "pairs_with_features": len(used)})


def estimate(log: ClickLog, method: Estimator, depth: int, *, features: np.ndarray | None = None,
             has_features: np.ndarray | None = None, seed: int = 13) -> Propensities:
    if log.impressions == 0 or log.clicks == 0:
        raise CascadeError("the log holds no clicked impression: nothing to estimate position bias from")
    if method == "harvest":
        return harvest(log, depth)
    if method == "randpair":
        return randpair(log, depth)
    if method == "em":
        return em(log, depth)
    if features is None or has_features is None:
        raise CascadeError("--propensity regression-em needs --features (a feature log of the logged queries, "
                           "from `cascade features log`)")
    return regression_em(log, depth, features, has_features, seed=seed)


# ---------------------------------------------------------------- labels


@dataclass
class Labels:
    """Graded labels per (query, document), with the estimate each grade came from."""

    method: str
    queries: list[str]
    rows: list[tuple[int, str, int, float, int, int]]  # (query index, doc, grade, estimate, impressions, clicks)
    prior: float
    detail: dict[str, Any] = field(default_factory=dict)

    def qrels(self, qid_of: Callable[[str], str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for qi, doc, grade, *_ in self.rows:
            out.setdefault(qid_of(self.queries[qi]), {})[doc] = grade
        return out


def click_labels(log: ClickLog, method: LabelMethod, *, propensities: Propensities | None = None,
                 depth: int = 10, min_impressions: int = 10, prior_strength: float = 5.0,
                 grades: Sequence[float] | None = None, clip: float = 0.05) -> Labels:
    """Graded labels from ``(clicks + m * mu) / (sum of row weights + m)`` per pair with enough impressions.

    Row weights: the rank's propensity (``ipw``, clipped at ``clip`` so one deep click cannot dominate),
    the rank's CTR over rank 1's (``coec``), or 1 (``ctr``). ``mu`` is the log's overall clicks per unit of
    weight, so a pair with few impressions is pulled toward the average rather than toward 0 or 1.
    ``grades``: absolute thresholds of grades 1, 2, ...; None: :data:`GRADE_STEPS` above the noise floor.
    """
    if grades is not None and (list(grades) != sorted(grades) or not grades):
        raise CascadeError(f"--grades {list(grades)}: give increasing thresholds, one per grade above 0")
    if method == "ipw":
        if propensities is None:
            raise CascadeError("ipw labels need estimated propensities")
        w = propensities.at(log.row_rank, clip)
    elif method == "coec":
        ctr = log.ctr_by_rank(depth)
        if ctr[0] <= 0:
            raise CascadeError("coec: no click at rank 1")
        curve = np.maximum(ctr / ctr[0], clip)
        w = curve[np.clip(log.row_rank, 1, depth) - 1]
    else:
        w = np.ones(len(log.row_rank))
    n = len(log.pairs)
    weight = np.bincount(log.row_pair, weights=w, minlength=n)
    imps, clicks = log.pair_counts()
    mu = float(clicks.sum() / max(weight.sum(), 1e-12))
    est = (clicks + prior_strength * mu) / (weight + prior_strength)
    labelled = np.flatnonzero(imps >= min_impressions)
    if not len(labelled):
        raise CascadeError(f"no (query, document) pair has {min_impressions} impressions; lower --min-impressions "
                           f"or collect more traffic")
    floor = float(np.median(est[labelled]))
    if grades is None:
        th = floor + (max(1.0, floor) - floor) * np.asarray(GRADE_STEPS)
    else:
        th = np.asarray(grades, dtype=np.float64)
    rows = []
    for i in labelled:
        qi, doc = log.pairs[i]
        rows.append((qi, doc, int((est[i] >= th).sum()), float(est[i]), int(imps[i]), int(clicks[i])))
    return Labels(method, log.queries, rows, mu, {"min_impressions": min_impressions, "prior_strength": prior_strength,
                                                  "noise_floor": round(floor, 5),
                                                  "grades": [round(float(t), 5) for t in th], "clip": clip,
                                                  "pairs_logged": n, "pairs_labelled": len(rows)})


# ---------------------------------------------------------------- query ids and output


def query_id_of(text: str, known: Mapping[str, str]) -> str:
    """The dataset's id of a query text (normalized match), else a stable id from the text."""
    return known.get(text) or "q" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def known_ids(queries: Mapping[str, str]) -> dict[str, str]:
    """Normalized text -> query id of a dataset's queries (the first id of a repeated text)."""
    out: dict[str, str] = {}
    for qid, text in queries.items():
        out.setdefault(normalize_query(text), qid)
    return out


def holdout_overlap(log_queries: Iterable[str], holdout: Mapping[str, str]) -> list[str]:
    """Logged query texts that are evaluation queries (``holdout``: normalized text -> id)."""
    return [t for t in log_queries if t in holdout]


def read_qrels_file(path: Path) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """A labels (qrels) file and the queries written beside it, if any (``*.queries.jsonl``)."""
    from cascade.datasets import read_qrels

    qrels = read_qrels(path)
    queries: dict[str, str] = {}
    side = sidecar(path)
    if side.is_file():
        with open(side, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                        queries[str(rec["_id"])] = str(rec["text"])
                    except (ValueError, KeyError, TypeError):
                        raise CascadeError(f"{side}:{n}: expected a JSON object with _id and text") from None
    return qrels, queries


def sidecar(path: Path) -> Path:
    """The queries file written beside a labels file: ``labels.tsv`` -> ``labels.queries.jsonl``."""
    return path.with_name(path.stem + ".queries.jsonl")


def write_labels(labels: Labels, out: Path, ids: Mapping[str, str], report: dict[str, Any]) -> dict[str, Any]:
    """``out`` in BEIR qrels form (query-id, corpus-id, score; what ``cascade features log --qrels`` reads),
    the labelled queries beside it (``*.queries.jsonl``), and ``*.json`` with the estimates and settings."""
    out.parent.mkdir(parents=True, exist_ok=True)
    used: dict[str, str] = {}
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qi, doc, grade, *_ in labels.rows:
            text = labels.queries[qi]
            qid = query_id_of(text, ids)
            used[qid] = text
            fh.write(f"{qid}\t{doc}\t{grade}\n")
    with open(sidecar(out), "w", encoding="utf-8") as fh:
        for qid, text in used.items():
            fh.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    hist = np.bincount([g for _, _, g, *_ in labels.rows], minlength=len(labels.detail.get("grades", ())) + 1)
    meta = {**report, "labels": labels.method, "prior_mean": round(labels.prior, 5), **labels.detail,
            "queries": len(used), "grade_counts": [int(x) for x in hist],
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


def propensity_error(est: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Relative error per rank of estimated against true propensities (both relative to rank 1)."""
    t = truth / truth[0]
    return np.abs(est[: len(t)] - t) / t


def sanity(values: np.ndarray) -> list[str]:
    """Warnings about an estimate a reader should not trust blindly."""
    out = []
    if not np.all(np.isfinite(values)):
        out.append("non-finite propensities")
    elif np.any(np.diff(values) > 0.05):
        bad = [k + 2 for k in np.flatnonzero(np.diff(values) > 0.05)]
        out.append(f"propensity rises at rank(s) {bad}: more traffic or randomization needed there")
    if math.isfinite(values[-1]) and values[-1] <= 0:
        out.append("a propensity of 0: no click was ever seen that deep")
    return out
