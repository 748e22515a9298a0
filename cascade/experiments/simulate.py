"""Simulated users over a judged collection: through the real service, and as many seeds as a power study needs.

One loop (:func:`run_stream`) plays impressions: a random judged query, a new
user, the list that user is served, the clicks a click model draws on it, the
running statistics. Where the list comes from is pluggable: the in-process
``serve`` ranks with the same cascades, assignment hash and team draft the
service uses; the HTTP ``serve`` (:class:`HttpTraffic`) asks a running service
and posts the clicks as UBI events. Both consume one random stream in the
same order, so for the same seed they produce the same impressions and clicks
whenever the service serves what the in-process engine predicts, and their
counts can be compared exactly (``cascade experiments simulate`` does).

Power studies repeat the in-process loop over many seeds: for each seed, the
first look at which the always-valid p-value falls below alpha is its
stopping time; "impressions to significance with 80% power" is the 80th
percentile of those stopping times (the number of impressions by which 80% of
seeds have reached significance). Fixed-horizon power (a test at one planned
look) is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cascade.experiments import stats
from cascade.experiments.assignment import pick, unit_hash, unit_seed
from cascade.experiments.clicks import ClickModel
from cascade.experiments.interleaving import credit, team_draft

# serve(user, qid, query_text) -> (shown ids, team per position or None, ab arm index or None)
Serve = Callable[[str, str, str], tuple[list[str], list[int] | None, int | None]]


@dataclass
class Judged:
    """What simulated users need: judged queries (id, normalized text), their grades (0..4), and each arm's
    ranking of each query (top ``k``)."""

    queries: list[tuple[str, str]]
    grades: dict[str, dict[str, int]]
    rankings: dict[str, dict[str, list[str]]]

    def grades_of(self, qid: str, ids: Sequence[str]) -> np.ndarray:
        g = self.grades.get(qid, {})
        return np.array([g.get(d, 0) for d in ids], dtype=np.int64)


@dataclass
class Design:
    """The experiment being simulated: as the service's config would declare it."""

    mode: str  # ab | interleave | multileave
    arms: list[str]
    salt: str
    metric: str = "clicks"  # ab: clicks | ctr | mrr
    shares: list[float] | None = None
    k: int = 10


def in_process(judged: Judged, d: Design) -> Serve:
    """The list the service would serve, computed with its own assignment and team-draft code."""
    shares = d.shares or [1.0 / len(d.arms)] * len(d.arms)

    def serve(user: str, qid: str, text: str) -> tuple[list[str], list[int] | None, int | None]:
        unit = f"u:{user}"
        if d.mode == "ab":
            a = pick(shares, unit_hash("arm", d.salt, unit))
            return judged.rankings[d.arms[a]][qid][:d.k], None, a
        ids, teams = team_draft([judged.rankings[a][qid][:d.k] for a in d.arms], d.k,
                                unit_seed("interleave", d.salt, unit, text))
        return ids, teams, None

    return serve


@dataclass
class Tally:
    """Running counts of one stream: what the service's aggregates hold after the same impressions."""

    n_arms: int
    mode: str
    metric: str = "clicks"
    served: list[int] = field(default_factory=list)
    sums: list[float] = field(default_factory=list)
    squares: list[float] = field(default_factory=list)
    clicks: list[int] = field(default_factory=list)
    wins: dict[tuple[int, int], int] = field(default_factory=dict)  # (i, j): i beat j
    ties: dict[tuple[int, int], int] = field(default_factory=dict)  # (i, j), i < j
    clicked: int = 0
    impressions: int = 0

    def __post_init__(self) -> None:
        n = self.n_arms
        self.served, self.sums, self.squares, self.clicks = [0] * n, [0.0] * n, [0.0] * n, [0] * n

    def add(self, shown: Sequence[str], teams: Sequence[int] | None, arm: int | None, clicked: Sequence[int]) -> None:
        self.impressions += 1
        if self.mode == "ab":
            assert arm is not None
            x = {"clicks": float(len(clicked)), "ctr": float(bool(clicked)),
                 "mrr": 1.0 / (min(clicked) + 1) if clicked else 0.0}[self.metric]
            self.served[arm] += 1
            self.sums[arm] += x
            self.squares[arm] += x * x
            self.clicks[arm] += len(clicked)
            self.clicked += bool(clicked)
            return
        assert teams is not None
        per = credit(teams, clicked, self.n_arms)
        for t in range(self.n_arms):
            self.clicks[t] += per[t]
        if not clicked:
            return
        self.clicked += 1
        for i in range(self.n_arms):
            for j in range(i + 1, self.n_arms):
                if per[i] > per[j]:
                    self.wins[(i, j)] = self.wins.get((i, j), 0) + 1
                elif per[j] > per[i]:
                    self.wins[(j, i)] = self.wins.get((j, i), 0) + 1
                else:
                    self.ties[(i, j)] = self.ties.get((i, j), 0) + 1

    def moments(self, a: int) -> stats.Moments:
        return stats.Moments(self.served[a], self.sums[a], self.squares[a])

    def pair(self, i: int, j: int) -> tuple[int, int, int]:
        return self.wins.get((i, j), 0), self.wins.get((j, i), 0), self.ties.get((min(i, j), max(i, j)), 0)

    def p_always_valid(self, i: int = 0, j: int = 1) -> float:
        if self.mode == "ab":
            return stats.msprt_p(self.moments(i), self.moments(j))
        w, l, _ = self.pair(i, j)
        return stats.sign_p_always_valid(w, l)

    def p_fixed(self, i: int = 0, j: int = 1) -> float:
        if self.mode == "ab":
            return stats.welch(self.moments(i), self.moments(j))[3]
        w, l, _ = self.pair(i, j)
        return stats.sign_p_fixed(w, l)

    def preference(self, i: int, j: int) -> float:
        """> 0 when arm i is ahead of arm j (interleaving: Δ; ab: mean difference i - j)."""
        if self.mode == "ab":
            return self.moments(i).mean - self.moments(j).mean
        w, l, t = self.pair(i, j)
        return (w - l) / max(w + l + t, 1)


@dataclass
class StreamResult:
    seed: int
    impressions: int
    stopped_at: int | None  # first look with always-valid p < alpha (None: never, within the cap)
    looks: list[tuple[int, float, float, float]]  # (impressions, p always-valid, p fixed, preference arm1 over arm0)
    tally: Tally


def run_stream(judged: Judged, d: Design, model: ClickModel, seed: int, *, max_impressions: int,
               look_every: int = 100, alpha: float = 0.05, stop: bool = True, serve: Serve | None = None,
               on_impression: Callable[[int, str, str, str, list[str], list[int] | None, int | None, list[int]], None]
               | None = None, on_look: Callable[[int, Tally], None] | None = None) -> StreamResult:
    """Play impressions of one seed; stop at the first significant look (``stop``) or at ``max_impressions``."""
    serve = serve or in_process(judged, d)
    rng = np.random.default_rng(seed)
    tally = Tally(len(d.arms), d.mode, d.metric)
    looks: list[tuple[int, float, float, float]] = []
    stopped = None
    best = 1.0
    for i in range(max_impressions):
        qid, text = judged.queries[int(rng.integers(len(judged.queries)))]
        user = f"sim{seed}-{i}"
        shown, teams, arm = serve(user, qid, text)
        clicked = model.simulate(judged.grades_of(qid, shown), rng)
        tally.add(shown, teams, arm, clicked)
        if on_impression is not None:
            on_impression(i, user, qid, text, shown, teams, arm, clicked)
        if (i + 1) % look_every == 0:
            if on_look is not None:
                on_look(i + 1, tally)
            p_av = tally.p_always_valid(0, 1)
            best = min(best, p_av)
            looks.append((i + 1, best, tally.p_fixed(0, 1), tally.preference(1, 0)))
            if best < alpha and stopped is None:
                stopped = i + 1
                if stop:
                    break
    return StreamResult(seed, tally.impressions, stopped, looks, tally)


# ---------------------------------------------------------------- power studies


@dataclass
class Power:
    """Impressions to significance over seeds, for one design."""

    mode: str
    seeds: int
    look_every: int
    max_impressions: int
    stopping: list[int | None]  # per seed
    fixed_power: list[tuple[int, float]]  # (impressions, share of seeds with fixed-horizon p < alpha there)
    correct_direction: float  # share of significant seeds whose winner is the offline winner

    @property
    def reached(self) -> float:
        return sum(s is not None for s in self.stopping) / max(len(self.stopping), 1)

    def quantile(self, q: float = 0.8) -> int | None:
        """Impressions by which a share ``q`` of seeds reached significance (None: fewer did, within the cap)."""
        done = sorted(s for s in self.stopping if s is not None)
        need = math.ceil(q * len(self.stopping))
        return done[need - 1] if len(done) >= need and need > 0 else None

    def fixed_horizon(self, power: float = 0.8) -> int | None:
        """The smallest planned sample size whose one-look test reaches ``power``."""
        return next((n for n, p in self.fixed_power if p >= power), None)

    def as_json(self) -> dict[str, Any]:
        return {"impressions_to_significance": self.quantile(0.8), "power": 0.8, "test": "always-valid",
                "fixed_horizon_impressions_80": self.fixed_horizon(0.8), "median_stopping": self.quantile(0.5),
                "seeds": self.seeds, "reached_within_cap": round(self.reached, 4), "look_every": self.look_every,
                "max_impressions": self.max_impressions, "correct_direction": round(self.correct_direction, 4),
                "stopping": self.stopping}


def power(judged: Judged, d: Design, model: ClickModel, *, seeds: Sequence[int], max_impressions: int,
          look_every: int = 100, alpha: float = 0.05, better: int = 1,
          on_seed: Callable[[int], None] | None = None) -> Power:
    """Stopping times over ``seeds`` (arm ``better`` is the offline winner: 0 or 1)."""
    stopping: list[int | None] = []
    fixed_hits: dict[int, int] = {}
    right = sig = 0
    for s in seeds:
        res = run_stream(judged, d, model, s, max_impressions=max_impressions, look_every=look_every, alpha=alpha,
                         stop=False)
        stopping.append(res.stopped_at)
        for n, _, p_fixed, _ in res.looks:
            fixed_hits[n] = fixed_hits.get(n, 0) + (p_fixed < alpha)
        if res.stopped_at is not None:
            sig += 1
            at = next(pref for n, _, _, pref in res.looks if n == res.stopped_at)
            right += (at > 0) == (better == 1)
        if on_seed:
            on_seed(s)
    fixed = sorted((n, c / len(seeds)) for n, c in fixed_hits.items())
    return Power(d.mode, len(seeds), look_every, max_impressions, stopping, fixed, right / sig if sig else 0.0)


def aa_false_positives(judged: Judged, d: Design, model: ClickModel, *, runs: int, impressions: int,
                       look_every: int = 100, alpha: float = 0.05, seed0: int = 10_000,
                       on_run: Callable[[int], None] | None = None) -> dict[str, float]:
    """A/A experiments (both arms the same ranking) looked at every ``look_every`` impressions: the share of
    runs that ever looked significant, by the always-valid test and by the fixed test applied at every look."""
    always = fixed = 0
    for r in range(runs):
        res = run_stream(judged, d, model, seed0 + r, max_impressions=impressions, look_every=look_every,
                         alpha=alpha, stop=False)
        always += res.stopped_at is not None
        fixed += any(p < alpha for _, _, p, _ in res.looks)
        if on_run:
            on_run(r)
    return {"runs": runs, "impressions": impressions, "look_every": look_every, "looks": impressions // look_every,
            "always_valid_fpr": always / runs, "fixed_test_peeking_fpr": fixed / runs}


def fidelity(judged: Judged, arms: Sequence[str], offline: Mapping[str, float], model: ClickModel, *,
             seeds: Sequence[int], impressions: int, look_every: int = 100, min_delta: float = 0.02,
             salt: str = "fidelity", on_run: Callable[[], None] | None = None) -> dict[str, Any]:
    """Interleaving every pair of ``arms`` and multileaving them all: how often the preference's direction
    matches the offline nDCG@10 winner, and the impressions each needs for 95% of seeds to get it right.

    Pairs closer than ``min_delta`` offline have no right answer and are left out.
    """
    pairs = [(a, b) for i, a in enumerate(arms) for b in arms[i + 1:] if abs(offline[a] - offline[b]) >= min_delta]
    looks = list(range(look_every, impressions + 1, look_every))
    pair_rows = []
    for a, b in pairs:
        d = Design("interleave", [a, b], salt)
        right_at = np.zeros(len(looks))
        for s in seeds:
            res = run_stream(judged, d, model, s, max_impressions=impressions, look_every=look_every, stop=False)
            sign = 1 if offline[a] > offline[b] else -1  # arm a (index 0) ahead: preference(1, 0) < 0
            right_at += np.array([(-pref * sign) > 0 for _, _, _, pref in res.looks], dtype=float)
            if on_run:
                on_run()
        share = right_at / len(seeds)
        pair_rows.append({"a": a, "b": b, "offline_delta": round(offline[a] - offline[b], 4),
                          "agreement": round(float(share[-1]), 4), "impressions_95": _first_stable(looks, share, 0.95)})
    # multileaving all arms at once: each pair's direction from the same streams
    d = Design("multileave", list(arms), salt)
    idx = {a: i for i, a in enumerate(arms)}
    right_multi = {p: np.zeros(len(looks)) for p in pairs}
    all_right = np.zeros(len(looks))
    for s in seeds:
        rng_res = _multileave_looks(judged, d, model, s, impressions, look_every)
        ok_all = np.ones(len(looks), dtype=bool)
        for a, b in pairs:
            sign = 1 if offline[a] > offline[b] else -1
            prefs = np.array([snap[(idx[a], idx[b])] for snap in rng_res])
            ok = (prefs * sign) > 0
            right_multi[(a, b)] += ok
            ok_all &= ok
        all_right += ok_all
        if on_run:
            on_run()
    multi_rows = []
    for a, b in pairs:
        share = right_multi[(a, b)] / len(seeds)
        multi_rows.append({"a": a, "b": b, "agreement": round(float(share[-1]), 4),
                           "impressions_95": _first_stable(looks, share, 0.95)})
    needs = [r["impressions_95"] or math.inf for r in pair_rows]
    pairwise_total = sum(needs)  # each pairwise run stopped where it got there (known only in hindsight)
    pairwise_equal = len(needs) * max(needs, default=0)  # runs of equal length, long enough for the hardest pair
    multi_need = max((r["impressions_95"] or math.inf for r in multi_rows), default=0)
    fin = lambda x: int(x) if math.isfinite(x) else None  # noqa: E731
    return {"user": model.name, "seeds": len(seeds), "impressions": impressions, "min_delta": min_delta,
            "pairs": pair_rows, "multileave": multi_rows,
            "multileave_all_pairs_right": round(float(all_right[-1] / len(seeds)), 4),
            "multileave_all_pairs_right_95": _first_stable(looks, all_right / len(seeds), 0.95),
            "pairwise_impressions_95_total": fin(pairwise_total),
            "pairwise_impressions_95_equal_runs": fin(pairwise_equal),
            "multileave_impressions_95": fin(multi_need)}


def _multileave_looks(judged: Judged, d: Design, model: ClickModel, seed: int, impressions: int,
                      look_every: int) -> list[dict[tuple[int, int], float]]:
    """Each pair's preference at every look of one multileaved stream."""
    out: list[dict[tuple[int, int], float]] = []
    n = len(d.arms)

    def look(_: int, tally: Tally) -> None:
        out.append({(i, j): tally.preference(i, j) for i in range(n) for j in range(n) if i != j})

    run_stream(judged, d, model, seed, max_impressions=impressions, look_every=look_every, stop=False, on_look=look)
    return out


def _first_stable(looks: Sequence[int], share: np.ndarray, level: float) -> int | None:
    """The first look from which the share of seeds getting it right stays at or above ``level``."""
    ok = share >= level
    for i in range(len(looks)):
        if ok[i:].all():
            return int(looks[i])
    return None


# ---------------------------------------------------------------- from a built index


def judged_from_index(cfg: Any, settings: Any, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
                      arms: Sequence[str], *, k: int = 10, limit: int | None = None,
                      on_progress: Callable[[int, int], None] | None = None) -> tuple[Judged, dict[str, float]]:
    """Each arm's top ``k`` for every judged query, ranked by the index's own cascades (the builder the service
    uses; candidates retrieved once per query), and each arm's offline nDCG@10 on those lists."""
    import asyncio

    import ir_measures
    from ir_measures import nDCG

    from cascade.builder import open_index
    from cascade.experiments.clicks import grade_scale
    from cascade.query import Query

    opened = open_index(cfg, settings, profiles=list(dict.fromkeys(arms)))
    cascades = [opened.cascade(a) for a in arms]
    judged_ids = [q for q in qrels if q in queries][: limit or None]
    rankings: dict[str, dict[str, list[str]]] = {a: {} for a in arms}
    texts: list[tuple[str, str]] = []

    async def rank_all() -> None:
        first = cascades[0]
        for n, qid in enumerate(judged_ids, start=1):
            try:
                q = first.validate(Query(text=queries[qid], size=k, id=qid))
            except Exception:  # an empty query text in the dataset: no user would type it
                continue
            retrieved = await first.retrieve(q)
            for arm, casc in zip(arms, cascades):
                res = await casc.search(q, validated=True, retrieved=retrieved)
                rankings[arm][qid] = list(res.candidates.ids[:k])
            texts.append((qid, q.text))
            if on_progress:
                on_progress(n, len(judged_ids))

    try:
        asyncio.run(rank_all())
    finally:
        asyncio.run(opened.close())
    qrels_used = {q: dict(qrels[q]) for q, _ in texts}
    offline = {}
    for arm in arms:
        run = {q: {d: float(k - i) for i, d in enumerate(rankings[arm][q])} for q, _ in texts}
        offline[arm] = float(ir_measures.calc_aggregate([nDCG @ 10], qrels_used, run)[nDCG @ 10])
    return Judged(texts, grade_scale(qrels_used), rankings), offline
