"""Per-query early exit: the config is checked at start-up, the controller skips a stage when the step before it is
confident (and says so in the trace), the budget path and the rerank path keep working, and the gate tuning
arithmetic (threshold for a share of the gain, logistic gate, cross-validation) holds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cascade.candidates import Candidates, Hit
from cascade.config import parse_config
from cascade.controller import Cascade
from cascade.errors import ConfigError
from cascade.query import Query
from cascade.stages.base import GATE_FEATURES, EarlyExit, Reranker, early_exit, exit_features
from cascade.tuning.gate import ExitData, choose_threshold, fit_gate, gate_probability, shares, tune_exit


class ListRetriever:
    def __init__(self, hits):
        self.hits = hits

    async def retrieve(self, query, k):
        return self.hits[:k]


class Docs:
    async def fetch(self, ids):
        return [{"title": f"doc {i}", "text": f"text of {i}"} for i in ids]


class ScoreBy(Reranker):
    kind = "test_scorer"

    def __init__(self, name, table, rerank=None, keep=None, exit_cfg=None):
        super().__init__(name, rerank, keep)
        self.table, self.calls = table, 0
        self.early_exit = exit_cfg

    async def score(self, query, candidates, deadline):
        self.calls += 1
        return np.array([self.table.get(i, 0.0) for i in candidates.ids])


def cascade_with(stages):
    cfg = parse_config({"index": "t", "retrievers": {"bm25": {"k": 6}}, "fusion": {"method": "rrf", "k": 0, "keep": 6}},
                       "t.yaml")
    hits = [Hit(x, 10.0 - i) for i, x in enumerate("abcdef")]
    return Cascade(cfg, {"bm25": ListRetriever(hits)}, list(stages), Docs())


def confident_first():
    # "a" far above the rest: a large margin between the first two scores
    return ScoreBy("first", {"a": 100.0, "b": 1.0, "c": 0.9, "d": 0.8, "e": 0.7, "f": 0.6})


def unsure_first():
    return ScoreBy("first", {"a": 1.0, "b": 0.99, "c": 0.5, "d": 0.4, "e": 0.3, "f": 0.2})


async def test_a_confident_previous_stage_skips_the_next_one_and_the_trace_says_so():
    second = ScoreBy("second", {"f": 9.0}, keep=4, exit_cfg=EarlyExit(signal="margin", threshold=1.5))
    c = cascade_with([confident_first(), second])
    res = await c.search(Query("q", size=6))
    tr = res.traces[-1]
    assert second.calls == 0 and tr.scored == 0 and res.early_exits == ["second"]
    assert tr.early_exit["signal"] == "margin" and tr.early_exit["value"] >= 1.5
    assert tr.note.startswith("early exit: first was confident")
    assert res.candidates.ids == ["a", "b", "c", "d"]  # the previous order, cut to the stage's keep
    assert tr.as_dict()["early_exit"]["threshold"] == 1.5 and res.degraded == [] and res.budget_skipped == []
    assert res.cost() == {"rows": 6}  # only the first stage's work


async def test_an_unsure_previous_stage_lets_the_stage_run():
    second = ScoreBy("second", {"f": 9.0}, exit_cfg=EarlyExit(signal="margin", threshold=1.5))
    res = await cascade_with([unsure_first(), second]).search(Query("q", size=6))
    assert second.calls == 1 and res.early_exits == [] and res.candidates.ids[0] == "f"
    assert res.traces[-1].early_exit is None and "early_exit" not in res.traces[-1].as_dict()


async def test_the_gate_signal_is_a_probability_from_the_same_features():
    feats = exit_features(np.array([100.0, 1.0, 0.9, 0.8, 0.7, 0.6]), "q", 10)
    w = {"margin12": 1.0, "top_z": 0.5}
    p = 1 / (1 + np.exp(-(-2.0 + feats["margin12"] + 0.5 * feats["top_z"])))
    gate = EarlyExit(signal="gate", threshold=round(p - 1e-6, 9), weights=w, bias=-2.0)
    d = early_exit(gate, np.array([100.0, 1.0, 0.9, 0.8, 0.7, 0.6]), "q")
    assert d is not None and d.value == pytest.approx(p)
    assert early_exit(gate.model_copy(update={"threshold": min(p + 1e-3, 0.999999)}),
                      np.array([100.0, 1.0, 0.9, 0.8, 0.7, 0.6]), "q") is None


def test_exit_features_are_z_normalized_over_the_window():
    f = exit_features(np.array([3.0, 1.0, 1.0, 1.0, 1.0, 99.0]), "two words", window=5)
    s = np.array([3.0, 1.0, 1.0, 1.0, 1.0])
    z = (s - s.mean()) / s.std()
    assert f["margin12"] == pytest.approx(z[0] - z[1]) and f["margin15"] == pytest.approx(z[0] - z[4])
    assert f["top_z"] == pytest.approx(z[0]) and f["qlen"] == pytest.approx(np.log1p(2))
    assert exit_features(np.array([1.0]), "q") is None  # too few scores: never exit
    assert exit_features(np.array([2.0, 2.0, 2.0]), "q")["margin12"] == 0.0  # flat: no confidence


async def test_rerank_never_exits_on_its_first_stage_and_budgets_still_plan():
    # The rerank APIs hand the caller's documents in the caller's order: no step has scored them yet.
    second = ScoreBy("second", {"b": 5.0}, exit_cfg=EarlyExit(signal="margin", threshold=-100.0))
    c = cascade_with([second])
    cands = Candidates(ids=list("abc"), fields=[{"title": x} for x in "abc"], score=np.array([9.0, 1.0, 0.5]))
    res = await c.rerank(c.validate(Query("q")), cands)
    assert second.calls == 1 and res.candidates.ids[0] == "b"
    # In a search, a skipped stage learns no cost, and the budget still shrinks a stage that runs.
    first = confident_first()
    third = ScoreBy("third", {"c": 3.0}, exit_cfg=EarlyExit(signal="margin", threshold=50.0))
    c = cascade_with([first, ScoreBy("second", {}, exit_cfg=EarlyExit(signal="margin", threshold=1.5)), third])
    res = await c.search(Query("q", size=6), budget_ms=10_000)
    assert res.early_exits == ["second"] and c._costs.estimate("second", 1) is None
    assert third.calls == 1  # the margin it reads is the first stage's (second exited): 2.2 < 50, so it runs
    assert res.traces[-1].note is None and res.traces[-1].scored == 6


@pytest.mark.parametrize("stage,err", [
    ({"early_exit": {"signal": "gate", "threshold": 0.5}}, "stages.0.early_exit"),
    ({"early_exit": {"signal": "gate", "threshold": 0.5, "weights": {"nope": 1}}}, "weights.nope: unknown gate feature"),
    ({"early_exit": {"signal": "gate", "threshold": 1.5, "weights": {"margin12": 1}}}, "strictly between 0 and 1"),
    ({"early_exit": {"signal": "margin", "threshold": 1, "weights": {"margin12": 1}}}, "takes no weights"),
    ({"early_exit": {"signal": "margin"}}, "stages.0.early_exit.threshold"),
    ({"early_exit": {"signal": "margin", "threshold": 1, "windw": 3}}, "stages.0.early_exit.windw"),
])
def test_a_bad_early_exit_fails_at_start_up_naming_file_and_key(stage, err):
    import tests.overlap_stage  # noqa: F401  (registers the test stage type)

    data = {"index": "t", "stages": [{"type": "test_overlap", **stage}]}
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "/cfg/t.yaml")
    assert "/cfg/t.yaml" in str(exc.value) and err in str(exc.value)


def test_a_good_early_exit_loads_and_the_plan_shows_it():
    import tests.overlap_stage  # noqa: F401

    cfg = parse_config({"index": "t", "stages": [{"type": "test_overlap", "early_exit": {
        "signal": "gate", "threshold": 0.7, "weights": dict.fromkeys(GATE_FEATURES, 0.5), "bias": -1}}]}, "t.yaml")
    st = cfg.stages[0]
    assert st.early_exit.signal == "gate" and st.early_exit.window == 10
    r = ScoreBy("x", {}, exit_cfg=st.early_exit)
    assert r.describe()["early_exit"] == "gate >= 0.7"


# ---------------------------------------------------------------------------------------------- gate tuning


def test_shares_and_threshold_for_a_target_share_of_the_gain():
    data = ExitData(delta=np.array([0.0, 0.0, 0.5, 0.5, -0.1]), units=np.array([10.0, 10, 10, 10, 10]),
                    feats=np.zeros((5, 4)))
    kept, saved = shares(np.array([True, True, False, False, False]), data)
    assert kept == pytest.approx(0.9 / 0.9) and saved == pytest.approx(0.4)
    kept, saved = shares(np.array([True, True, False, False, True]), data)  # skipping a loss keeps > 100%
    assert kept == pytest.approx(1.0 / 0.9) and saved == pytest.approx(0.6)
    # The signal is high exactly where the stage does not help: the best threshold skips those three.
    signal = np.array([5.0, 4.0, 0.0, 1.0, 3.0])
    assert choose_threshold(signal, data, target=0.9) == pytest.approx(2.0)  # midway between 1 and 3
    assert choose_threshold(signal, data, target=1.05) == pytest.approx(2.0)  # the loss must exit too
    assert choose_threshold(signal, data, target=1.2) == float("inf")  # no threshold keeps 120%
    # A signal high where the stage helps most: nothing can exit without losing the target.
    assert choose_threshold(np.array([0.0, 1.0, 5.0, 4.0, 3.0]), data, target=0.99) == float("inf")


def test_the_logistic_gate_learns_which_way_its_features_point():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] * 2.0 - x[:, 2] + rng.normal(scale=0.5, size=400) > 0).astype(float)
    w, b = fit_gate(x * 3 + 1, y)  # on shifted, scaled raw features: weights come back on the raw scale
    p = gate_probability(x * 3 + 1, w, b)
    assert w[0] > 0 and w[2] < 0 and abs(w[1]) < abs(w[0]) / 3
    assert ((p > 0.5) == (y > 0.5)).mean() > 0.85
    assert fit_gate(x, np.ones(400)) is None  # one class only: nothing to learn


def test_tune_exit_is_cross_validated_and_chooses_a_signal_that_meets_the_target():
    rng = np.random.default_rng(1)
    n = 300
    margin = rng.uniform(0, 4, n)
    # The stage helps only where the previous step was unsure (small margin): a margin gate should skip the rest.
    delta = np.where(margin < 1.5, rng.uniform(0.05, 0.3, n), 0.0)
    feats = np.column_stack([margin, margin * 1.5, margin, np.full(n, 1.0)])
    data = ExitData(delta, np.full(n, 10.0), feats)
    folds = [list(range(f, n, 5)) for f in range(5)]
    choice = tune_exit(data, folds, "ce", target=0.9)
    assert choice.config is not None
    for sig in ("margin", "gate"):
        oof = choice.out_of_fold[sig]
        assert oof["kept_share"] >= 0.85 and oof["saved_share"] > 0.4  # out of fold, not on its own data
    cfg = choice.config
    if cfg.signal == "margin":  # the stage helps below a margin of 1.5: the threshold sits just above it
        assert 1.0 < cfg.threshold < 2.0  # (a little below 1.5: 90% of the gain is the target, not all)
    else:
        assert 0 < cfg.threshold < 1 and set(cfg.weights) == set(GATE_FEATURES)
    nothing = tune_exit(ExitData(np.zeros(n), np.full(n, 10.0), feats), folds, "ce")
    assert nothing.config is None and "gains nothing" in nothing.reason


def test_the_controller_and_the_tuner_read_the_same_signal():
    """The tuner computes the gate's features with the function the controller calls, over the same scores."""
    scores = np.array([4.0, 1.0, 0.5, 0.2, 0.1, 0.0, -1.0])
    cfg = EarlyExit(signal="margin", threshold=1.0)
    f = exit_features(scores, "a b c", cfg.window)
    d = early_exit(cfg, scores, "a b c")
    assert d is not None and d.value == pytest.approx(f["margin12"])
    asyncio.run(asyncio.sleep(0))
