"""The pure parts of experiments: assignment, team draft, click models, statistics, event validation, config."""

from __future__ import annotations

import datetime as dt
import math
import random

import numpy as np
import pytest
from scipy import stats as sps

from cascade.errors import ConfigError
from cascade.experiments import clicks, stats
from cascade.experiments.assignment import assign, forced, unit_hash, unit_of
from cascade.experiments.config import ExperimentConfig
from cascade.experiments.events import parse_batch, record
from cascade.experiments.interleaving import credit, outcome, team_draft
from cascade.experiments.simulate import Design, Judged, Tally, aa_false_positives, power, run_stream
from tests.conftest import tiny_config

PROFILES = {"b": {"inherit": "default"}, "c": {"inherit": "default"}}


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("exps, key, text", [
    ({"x": {"mode": "interleave", "arms": ["default", "nope"]}}, "experiments.x.arms.1", "no rank profile 'nope'"),
    ({"x": {"mode": "multileave", "arms": ["default", "b"]}}, "experiments.x.arms", "3 or more"),
    ({"x": {"mode": "interleave", "arms": ["default", "b", "c"]}}, "experiments.x.arms", "exactly 2"),
    ({"x": {"mode": "ab", "arms": ["default", "default"]}}, "experiments.x.arms", "listed twice"),
    ({"x": {"mode": "interleave", "arms": ["default", "b"], "shares": {"default": 1, "b": 1}}},
     "experiments.x.shares", "only ab"),
    ({"x": {"mode": "ab", "arms": ["default", "b"], "shares": {"default": 1}}}, "experiments.x.shares", "one share"),
    ({"x": {"mode": "ab", "arms": ["default", "b"], "traffic": 0.7}, "y": {"mode": "ab", "arms": ["b", "c"],
                                                                          "traffic": 0.5}},
     "experiments", "add up to 1.2"),
    ({"X!": {"mode": "ab", "arms": ["default", "b"]}}, "experiments.X!", "lowercase"),
    ({"x": {"mode": "ab", "arms": ["default", "b"], "start": "2026-01-02T00:00:00Z", "stop": "2026-01-01T00:00:00Z"}},
     "experiments.x.stop", "after start"),
    ({"x": {"mode": "abtest", "arms": ["default", "b"]}}, "experiments.x.mode", "'ab'"),
])
def test_bad_experiments_fail_at_start_up_naming_the_key(exps, key, text):
    with pytest.raises(ConfigError) as e:
        tiny_config(profiles=PROFILES, experiments=exps)
    assert e.value.key == key and text in e.value.reason, str(e.value)


def test_changing_the_design_changes_the_fingerprint_but_not_the_description():
    a = ExperimentConfig(mode="ab", arms=["x", "y"])
    assert a.fingerprint() == ExperimentConfig(mode="ab", arms=["x", "y"], description="new words").fingerprint()
    assert a.fingerprint() != ExperimentConfig(mode="ab", arms=["y", "x"]).fingerprint()
    assert a.fingerprint() != ExperimentConfig(mode="ab", arms=["x", "y"], shares={"x": 3, "y": 1}).fingerprint()


# ---------------------------------------------------------------- assignment


def test_assignment_is_sticky_balanced_and_split_by_traffic():
    exps = {"e1": ExperimentConfig(mode="ab", arms=["a", "b"], traffic=0.3, shares={"a": 1, "b": 3}),
            "e2": ExperimentConfig(mode="interleave", arms=["a", "b"], traffic=0.2)}
    got = {}
    for u in range(20_000):
        unit, kind = unit_of(f"user{u}", None, "r")
        a = assign("idx", exps, unit=unit, unit_kind=kind, query_text="q")
        assert a == assign("idx", exps, unit=unit, unit_kind=kind, query_text="q")  # sticky, stateless
        got.setdefault(None if a is None else (a.experiment, a.arm), 0)
        got[None if a is None else (a.experiment, a.arm)] += 1
    n = 20_000
    assert abs(got[None] / n - 0.5) < 0.02 and abs(got[("e2", None)] / n - 0.2) < 0.02
    e1 = got[("e1", "a")] + got[("e1", "b")]
    assert abs(e1 / n - 0.3) < 0.02 and abs(got[("e1", "b")] / e1 - 0.75) < 0.03
    assert unit_hash("x") == unit_hash("x") and 0 <= unit_hash("y") < 1


def test_a_new_experiment_at_the_end_moves_nobody_and_a_stopped_one_frees_its_users():
    first = {"e1": ExperimentConfig(mode="ab", arms=["a", "b"], traffic=0.4)}
    more = {**first, "e2": ExperimentConfig(mode="ab", arms=["a", "b"], traffic=0.4)}
    past = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    stopped = {"e1": ExperimentConfig(mode="ab", arms=["a", "b"], traffic=0.4, stop=past)}
    for u in range(2000):
        unit = f"u:{u}"
        a = assign("i", first, unit=unit, unit_kind="user", query_text="q")
        b = assign("i", more, unit=unit, unit_kind="user", query_text="q")
        if a is not None:
            assert b == a
        assert assign("i", stopped, unit=unit, unit_kind="user", query_text="q") is None


def test_units_prefer_user_then_session_then_request():
    assert unit_of("u", "s", "r") == ("u:u", "user") and unit_of(None, "s", "r") == ("s:s", "session")
    assert unit_of(None, None, "r") == ("r:r", "request")
    exp = ExperimentConfig(mode="interleave", arms=["a", "b"])
    f = forced("e", exp, "b", unit="u:x", unit_kind="user")
    assert f.forced and f.arm == "b" and f.as_json()["forced"] is True


# ---------------------------------------------------------------- team draft


def test_team_draft_interleaves_without_repeats_and_keeps_each_teams_order():
    rng = random.Random(1)
    docs = [f"d{i}" for i in range(30)]
    for trial in range(500):
        rankings = [rng.sample(docs, rng.randint(0, 12)) for _ in range(rng.choice([2, 3, 4]))]
        ids, teams = team_draft(rankings, 10, seed=trial)
        assert len(ids) == len(set(ids)) == len(teams)
        union = set().union(*map(set, rankings))
        assert len(ids) == min(10, len(union))
        for t, r in enumerate(rankings):
            picked = [d for d, tt in zip(ids, teams) if tt == t]
            assert picked == sorted(picked, key=r.index)  # each team adds its own documents in its order
        if all(len(r) >= 10 for r in rankings):  # nobody exhausted: picks are balanced round by round
            counts = [teams.count(t) for t in range(len(rankings))]
            assert max(counts) - min(counts) <= 1


def test_random_clicks_favour_nobody():
    """Team draft's fairness: a user clicking at random gives each team equal credit in expectation."""
    a = [f"a{i}" for i in range(10)]
    b = [f"a{i}" for i in (1, 0, 3, 2, 5, 4, 7, 6, 9, 8)]
    wins = losses = 0
    rng = random.Random(7)
    for s in range(4000):
        ids, teams = team_draft([a, b], 10, seed=s)
        clicked = [p for p in range(10) if rng.random() < 0.2]
        c = credit(teams, clicked, 2)
        o = outcome(c, 0, 1)
        wins += o > 0
        losses += o < 0
    assert sps.binomtest(wins, wins + losses, 0.5).pvalue > 0.01, (wins, losses)


# ---------------------------------------------------------------- click models


def test_click_models_follow_their_parameters():
    rng = np.random.default_rng(0)
    perfect, nav = clicks.model("perfect"), clicks.model("navigational")
    grades = np.array([0, 0, 4, 0, 2])
    for _ in range(500):
        got = perfect.simulate(grades, rng)
        assert set(got) <= {2, 4}  # perfect users never click grade 0
    n = 20_000
    first = sum(0 in nav.simulate(np.array([4, 4]), rng) for _ in range(n)) / n
    assert abs(first - 0.95) < 0.01
    both = sum(len(nav.simulate(np.array([4, 4]), rng)) == 2 for _ in range(n)) / n
    assert abs(both - 0.95 * 0.1 * 0.95) < 0.01  # stops after a grade-4 click with 0.9
    pbm = clicks.model("pbm", eta=1.0, epsilon=0.1)
    at3 = sum(2 in pbm.simulate(np.array([4, 4, 4]), rng) for _ in range(n)) / n
    assert abs(at3 - 1 / 3) < 0.015
    assert clicks.grade_scale({"q": {"a": 1, "b": 0}}) == {"q": {"a": 4, "b": 0}}
    assert clicks.grade_scale({"q": {"a": 3, "b": 1, "c": 0}}) == {"q": {"a": 4, "b": 1, "c": 0}}
    with pytest.raises(ValueError, match="unknown click model"):
        clicks.model("nope")


# ---------------------------------------------------------------- statistics


def test_always_valid_sign_test_and_its_confidence_sequence():
    assert stats.sign_p_always_valid(0, 0) == 1.0
    assert stats.sign_p_always_valid(80, 20) < 1e-6 < stats.sign_p_always_valid(55, 45)
    # more conservative than the one-look test at the same counts: the price of looking any time
    assert stats.sign_p_always_valid(60, 40) > stats.sign_p_fixed(60, 40)
    lo, hi = stats.sign_confidence_sequence(60, 40)
    assert lo < 0.6 < hi and 0 < lo and hi < 1
    lo2, hi2 = stats.sign_confidence_sequence(600, 400)
    assert lo < lo2 < 0.6 < hi2 < hi  # narrows with data
    d, dlo, dhi = stats.delta_bootstrap(60, 40, 100, seed=1)
    assert d == pytest.approx(0.1) and dlo < 0.1 < dhi


def test_msprt_and_welch_on_known_moments():
    rng = np.random.default_rng(3)
    x, y = rng.normal(1.0, 1.0, 4000), rng.normal(1.1, 1.0, 4000)
    a = stats.Moments(len(x), float(x.sum()), float((x ** 2).sum()))
    b = stats.Moments(len(y), float(y.sum()), float((y ** 2).sum()))
    d, lo, hi, p = stats.welch(a, b)
    ref = sps.ttest_ind(y, x, equal_var=False)
    assert p == pytest.approx(ref.pvalue, rel=1e-6) and lo < d < hi
    assert stats.msprt_p(a, b) < 0.05 and stats.msprt_p(a, a) == 1.0
    cs = stats.msprt_confidence_sequence(a, b)
    assert cs[0] < d < cs[1] and cs[1] - cs[0] > hi - lo  # wider than the one-look interval


def test_sample_ratio_mismatch():
    assert stats.srm([5000, 5000], [0.5, 0.5]) > 0.5
    assert stats.srm([5000, 5400], [0.5, 0.5]) < stats.SRM_ALPHA
    assert stats.srm([2500, 7500], [0.25, 0.75]) > 0.5


# ---------------------------------------------------------------- simulation on a tiny judged set


def _judged() -> Judged:
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(40)]
    queries, grades, good, bad = [], {}, {}, {}
    for q in range(60):
        qid = f"q{q}"
        rel = rng.sample(docs, 2)
        others = [d for d in docs if d not in rel]
        rng.shuffle(others)
        good[qid] = rel + others[:8]
        bad[qid] = others[:8] + rel
        queries.append((qid, f"query {q}"))
        grades[qid] = {d: 4 for d in rel}
    return Judged(queries, grades, {"good": good, "bad": bad, "bad2": dict(bad)})


def test_interleaving_finds_the_better_ranker_faster_than_ab():
    j = _judged()
    nav = clicks.model("navigational")
    il = power(j, Design("interleave", ["bad", "good"], "s"), nav, seeds=range(20), max_impressions=3000,
               look_every=50, better=1)
    ab = power(j, Design("ab", ["bad", "good"], "s"), nav, seeds=range(20), max_impressions=3000, look_every=50,
               better=1)
    assert il.reached == 1.0 and il.correct_direction == 1.0
    assert il.quantile(0.8) < (ab.quantile(0.8) or math.inf)


def test_aa_runs_keep_the_always_valid_false_positive_rate_low():
    j = _judged()
    out = aa_false_positives(j, Design("interleave", ["bad", "bad2"], "aa"), clicks.model("informational"),
                             runs=60, impressions=1000, look_every=50)
    assert out["always_valid_fpr"] <= 0.1 and out["looks"] == 20


def test_tally_counts_like_the_aggregates():
    t = Tally(2, "interleave")
    t.add(["x", "y", "z"], [0, 1, 0], None, [0, 2])  # team 0 clicked twice
    t.add(["x", "y"], [1, 0], None, [0, 1])  # one each: a tie
    t.add(["x"], [0], None, [])  # no click: not counted
    assert t.pair(0, 1) == (1, 0, 1) and t.clicked == 2 and t.clicks == [3, 1]
    ab = Tally(2, "ab", "mrr")
    ab.add(["x", "y"], None, 1, [1])
    assert ab.moments(1).total == 0.5 and ab.served == [0, 1]


# ---------------------------------------------------------------- events


def test_events_are_validated_one_by_one_and_get_stable_ids():
    ok = {"action_name": "click", "query_id": "q1", "timestamp": "2026-12-02T10:00:00Z",
          "event_attributes": {"object": {"object_id": "d1"}, "position": {"ordinal": 1}}}
    batch = [ok, {"action_name": "click", "query_id": "q1"}, {"query_id": "q"}, {"action_name": "dwell", "query_id":
             "q", "event_attributes": {"object": {"object_id": "d"}}}, "nope", {**ok, "timestamp": "yesterday"},
             {**ok, "event_attributes": {"object": {"object_id": "d1"}, "position": {"ordinal": 0}}},
             {"action_name": "add_to_cart", "query_id": "q2"}]
    good, bad = parse_batch({"events": batch}, 100)
    assert [i for i, _ in good] == [0, 7]
    fields = {b["index"]: b["field"] for b in bad}
    assert fields == {1: "events.1.event_attributes.object.object_id", 2: "events.2.action_name",
                      3: "events.3.event_attributes.dwell_time", 4: "events.4", 5: "events.5.timestamp",
                      6: "events.6.event_attributes.position.ordinal"}
    now = dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)
    r1, r2 = record(good[0][1], now), record(good[0][1], now + dt.timedelta(seconds=5))
    assert r1["event_id"] == r2["event_id"] and r1["timestamp"] == "2026-12-02T10:00:00.000Z"  # a retry: same id
    with pytest.raises(ValueError, match="limit is 2"):
        parse_batch([ok, ok, ok], 2)
    with pytest.raises(ValueError, match="JSON array"):
        parse_batch({"event": []}, 10)


def test_a_run_stream_is_reproducible():
    j = _judged()
    d = Design("interleave", ["bad", "good"], "s")
    a = run_stream(j, d, clicks.model("perfect"), 3, max_impressions=500, stop=False)
    b = run_stream(j, d, clicks.model("perfect"), 3, max_impressions=500, stop=False)
    assert a.looks == b.looks and a.tally.wins == b.tally.wins
