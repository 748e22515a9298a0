"""`cascade tune` on a tiny real index: the sweep re-orders exactly as the cascade ranks, each pair is scored once,
the choice rule and the verdicts follow their definitions, the interval is a paired bootstrap over queries, the
proposal loads, and the evaluation split is refused."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from typing import ClassVar, Literal

import ir_measures
import numpy as np
import pytest
from ir_measures import nDCG

from cascade.builder import open_index
from cascade.query import Query
from cascade.stages import BuildContext, Reranker, StageConfigBase, register_stage
from cascade.tuning import chain
from cascade.tuning.collect import collect, fit_cost
from cascade.tuning.labels import clicks_to_judgments, tuning_mode
from cascade.tuning.proposal import diff, profile_edit, with_profile
from cascade.tuning.space import Setting, Space, StageSetting, current_setting, fusion_variants, grid
from cascade.tuning.stats import Judgments, folds_by_query, paired_bootstrap, pareto_front
from cascade.tuning.sweep import Matrix, Tuner, evaluate, select
from connectors.embedded import build_index
from tests.conftest import TINY_DOCS, tiny_config

SCORED: list[tuple[str, str]] = []  # (query, document) pairs the oracle stage was asked to score


class OracleConfig(StageConfigBase):
    """A real pair stage that knows the answers (a test's stand-in for a model that always helps), or, with
    ``flat``, one that scores every document alike (a model that changes nothing)."""

    cost_unit: ClassVar[str] = "pairs"
    pair_cacheable: ClassVar[bool] = True

    type: Literal["test_oracle"] = "test_oracle"
    answers: dict[str, list[str]] = {}
    flat: bool = False

    def text_fields(self) -> list[str]:
        return ["title"]

    def build(self, ctx: BuildContext) -> "OracleStage":
        return OracleStage(self)


class OracleStage(Reranker):
    def __init__(self, cfg: OracleConfig):
        self.configure(cfg)
        self.cfg, self.scorer = cfg, object()

    async def score(self, query, candidates, deadline) -> np.ndarray:
        SCORED.extend((query.text, d) for d in candidates.ids)
        if self.cfg.flat:
            return np.zeros(len(candidates))
        good = set(self.cfg.answers.get(query.text, []))
        return np.array([1.0 if d in good else 0.0 for d in candidates.ids])


register_stage(OracleConfig)

# Queries whose answer fusion ranks second on the tiny index (word overlap with other documents), so a stage
# that knows the answers gains on every one of them.
QUERIES = {"q1": "electricity", "q2": "cells", "q3": "solar", "q4": "wind electricity", "q5": "genes cells",
           "q6": "deep ocean", "q7": "fold structures", "q8": "store electricity night", "q9": "energy from air",
           "q10": "dark fish", "q11": "sunlight", "q12": "chains"}
QRELS = {"q1": {"d2": 1}, "q2": {"d1": 1}, "q3": {"d5": 1}, "q4": {"d5": 1}, "q5": {"d1": 1}, "q6": {"d3": 1},
         "q7": {"d5": 1}, "q8": {"d1": 2}, "q9": {"d1": 1}, "q10": {"d5": 1}, "q11": {"d5": 1}, "q12": {"d6": 1}}
ANSWERS = {QUERIES[q]: list(r) for q, r in QRELS.items()}
SPACE = Space(depths=(2,), weights=((1.0, 0.0), (1.0, 1.0)), norms=("zscore",))  # a small grid: seconds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cascade.settings import Settings

    d = tmp_path_factory.mktemp("tune")
    settings = Settings(index_dir=d / "indexes", config_dir=d / "configs", cache_dir=d / "cache")
    stages = [{"type": "test_oracle", "name": "noise", "flat": True, "rerank": 4},
              {"type": "test_oracle", "name": "oracle", "answers": ANSWERS, "rerank": 3,
               "combine": {"weights": {"oracle": 1, "noise": 1}}}]
    cfg = tiny_config(stages=stages, fusion={"method": "rrf", "k": 60, "keep": 6})
    build_index(cfg, ((i + 1, dict(x)) for i, x in enumerate(TINY_DOCS)), settings, source="tiny")
    opened = open_index(cfg, settings)
    yield opened
    asyncio.run(opened.close())


@pytest.fixture(scope="module")
def collected(tiny):
    casc = tiny.cascade()
    variants = fusion_variants(casc.config.fusion, list(casc.retrievers), small=True)
    SCORED.clear()
    col = asyncio.run(collect(casc, QUERIES, QRELS, dataset="tiny", split="train", variants=variants, space=SPACE,
                              calibrate_queries=0))
    col.notes.append(f"scored {len(SCORED)} pairs")  # what the collection alone asked the stages to score
    return casc, col


@pytest.fixture(scope="module")
def matrix(collected):
    casc, col = collected
    return evaluate(col, grid(col.variants, col.specs, col.space))  # raises if a window lacks a score


# ------------------------------------------------------------------------------------------- statistics


def test_ndcg_is_trec_evals():
    rng = random.Random(3)
    docs = [f"d{i}" for i in range(30)]
    qrels, run = {}, {}
    for q in range(25):
        qrels[f"q{q}"] = {d: rng.choice([0, 1, 1, 2, 3]) for d in rng.sample(docs, 8)}
        run[f"q{q}"] = rng.sample(docs, 15)
    want = {m.query_id: m.value for m in ir_measures.iter_calc(
        [nDCG @ 10], qrels, {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in run.items()})}
    for q in qrels:
        assert Judgments(qrels[q]).ndcg(run[q]) == pytest.approx(want[q], abs=1e-9)


def test_folds_are_by_query_disjoint_and_seeded():
    qids = [f"q{i}" for i in range(23)]
    folds = folds_by_query(qids, 5, seed=7)
    assert sorted(q for f in folds for q in f) == sorted(qids) and len(folds) == 5
    assert all(not set(a) & set(b) for i, a in enumerate(folds) for b in folds[i + 1:])
    assert folds == folds_by_query(qids, 5, seed=7) != folds_by_query(qids, 5, seed=8)
    with pytest.raises(ValueError):
        folds_by_query(qids[:3], 5)


def test_the_interval_is_paired_over_queries():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 60)  # queries differ a lot from each other...
    better = base + 0.02 + rng.normal(0, 0.005, 60)  # ...but the stage adds a small, steady gain to each
    iv = paired_bootstrap(better, base, resamples=2000)
    assert iv.low > 0 and iv.mean == pytest.approx(float(np.mean(better - base)))
    # Unpaired, the same gain would drown in the spread between queries:
    from scipy.stats import bootstrap

    unpaired = bootstrap((better, base), lambda a, b, axis=-1: a.mean(axis) - b.mean(axis), vectorized=True,
                         paired=False, n_resamples=2000, random_state=np.random.default_rng(0)).confidence_interval
    assert unpaired.low < 0 < unpaired.high
    same = paired_bootstrap([0.5, 0.2, 0.9], [0.5, 0.2, 0.9])
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero
    noise = paired_bootstrap(rng.normal(0, 1, 80), rng.normal(0, 1, 80), resamples=2000)
    assert noise.low < 0 < noise.high


def test_pareto_front():
    pts = [(10, 0.5), (5, 0.4), (20, 0.5), (7, 0.45), (30, 0.6), (6, 0.3)]
    assert pareto_front(pts) == [1, 3, 0, 4]


def test_unit_costs_are_fitted_on_measured_calls():
    c = fit_cost("pairs", [(10, 5 + 10 * 2.0), (20, 5 + 20 * 2.0), (30, 5 + 30 * 2.0)])
    assert c.fixed == pytest.approx(5) and c.per_unit == pytest.approx(2) and c.ms(0) == 0 and c.ms(5) == pytest.approx(15)


def test_the_choice_is_the_cheapest_within_tolerance():
    s = [Setting(i, ()) for i in range(4)]
    nd = np.array([[0.70, 0.70], [0.69, 0.69], [0.60, 0.60], [0.71, 0.71]])
    ms = np.array([[100, 100], [10, 10], [1, 1], [500, 500]], dtype=float)
    mat = Matrix(s, nd, ms)
    everything = np.ones(4, dtype=bool)
    assert select(mat, [0, 1], everything, 0.0) == 3
    assert select(mat, [0, 1], everything, 0.02) == 1  # 0.69 is within 0.02 of 0.71 and costs 10 ms
    assert select(mat, [0, 1], np.array([True, False, True, True]), 0.02) == 0


# ------------------------------------------------------------------------------------- on a real tiny index


def test_the_sweep_ranks_exactly_as_the_cascade_would(tiny, collected):
    """Every sampled setting, re-ordered from collected scores, gives the top 10 the real cascade gives."""
    casc, col = collected
    settings = grid(col.variants, col.specs, col.space)
    cur = current_setting(col.specs)
    rng = random.Random(0)

    async def real(s: Setting, text: str) -> list[str]:
        view = casc.with_fusion(col.variants[s.fusion].config)
        stages, prev = [], "fusion"
        for sp, ss, st in zip(col.specs, s.stages, casc.stages):
            if ss.enabled:
                st = copy.copy(st)
                st.rerank, st.keep, st.combine = ss.rerank, ss.keep, ss.resolved_combine(sp.name, prev)
                stages.append(st)
                prev = sp.name
        res = await view._view(stages=stages).search(Query(text, size=10))
        return res.candidates.ids[:10]

    for s in [cur, *rng.sample(settings, 25)]:
        for qd in col.queries[:4]:
            assert chain.run(qd, s, col.specs).top == asyncio.run(real(s, qd.text)), (s, qd.qid)


def test_each_pair_is_scored_once_and_every_reachable_window_is_covered(collected, matrix):
    casc, col = collected
    by_stage = {sp.name: sum(len(qd.pairs[sp.name]) for qd in col.queries) for sp in col.specs}
    assert f"scored {sum(by_stage.values())} pairs" in col.notes  # nothing scored twice
    mat = matrix
    assert mat.ndcg.shape == (len(mat.settings), len(QUERIES)) and (mat.ms > 0).all()
    # The sweep's shortcut for the last stage (shared normalized columns) ranks as the full stage arithmetic does.
    picked = random.Random(1).sample(range(len(mat.settings)), 120)
    for j, qd in enumerate(col.queries):
        memo: dict = {}
        for i in picked:
            fast = chain.run(qd, mat.settings[i], col.specs, memo=memo)
            assert fast.top == chain.run(qd, mat.settings[i], col.specs).top
            assert mat.ndcg[i, j] == qd.judgments.ndcg(fast.top)
    assert col.loaded_costs["oracle"].unit == "pairs" and col.loaded_costs["oracle"].calls > 0
    assert set(col.recall) == {"bm25", "knn", "fusion"} and 0 < col.recall["fusion"][6] <= 1  # up to fusion keep


def test_unit_costs_are_calibrated_on_repeated_calls(tiny, collected):
    from cascade.tuning.collect import calibrate

    casc, col = collected
    parsed = {qd.qid: casc.validate(Query(text=qd.text, id=qd.qid)) for qd in col.queries}
    costs = asyncio.run(calibrate(casc, col, parsed, casc, {st.name: st for st in casc.stages}, 2, 2,
                                  lambda d, t: None))
    assert costs["oracle"].calls == 2 and costs["noise"].unit == "pairs"  # 2 queries x one size (6 documents < 10)
    assert col.calibration == {"queries": 2, "repeats": 2} and set(col.retriever_samples) == {"bm25", "knn"}
    assert all(len(v) == 2 and min(v) > 0 for v in col.retriever_samples.values()) and col.embed_ms > 0


def test_verdicts_on_a_tiny_index(collected, matrix):
    """The oracle's gain over the step before it is positive with an interval above 0; the noise stage's is not.
    The interval is the paired bootstrap of the held-out per-query differences."""
    casc, col = collected
    mat = matrix
    tuner = Tuner(col, mat, tolerance=0.0, folds=5, resamples=2000)
    proc = tuner.decide(list(range(len(col.queries))), with_retrievers=True)
    v = {x.name: x for x in proc.verdicts}
    assert [x.name for x in proc.verdicts] == ["bm25", "knn", "fusion", "noise", "oracle"]
    assert not v["noise"].pays and (v["noise"].gain.mean, v["noise"].gain.low, v["noise"].gain.high) == (0, 0, 0)
    assert v["oracle"].pays and v["oracle"].gain.low > 0 and v["oracle"].unit == "pairs"
    # with against without, on the final ranking: the flat stage changes nothing, the oracle a lot
    assert (v["noise"].ablation.mean, v["noise"].ablation.high) == (0, 0) and v["oracle"].ablation.low > 0
    assert v["oracle"].as_json()["pays_by"] == "marginal" and v["noise"].as_json()["pays_by"] is None
    chosen = mat.settings[proc.setting]
    assert not chosen.stages[0].enabled and chosen.stages[1].enabled  # what does not pay is off
    # Recompute the oracle's interval by hand from the same folds.
    folds = tuner.folds(list(range(len(col.queries))))
    on = np.array([s.stages[0].enabled is False and s.stages[1].enabled for s in mat.settings])
    a, b = [], []
    for f, held in enumerate(folds):
        train = [c for g, fl in enumerate(folds) if g != f for c in fl]
        s = mat.settings[select(mat, train, on, 0.0)]
        for c in held:
            out = chain.run(col.queries[c], s, col.specs, steps=True)
            a.append(col.queries[c].judgments.ndcg(out.steps[2].top))
            b.append(col.queries[c].judgments.ndcg(out.steps[0].top))
    want = paired_bootstrap(a, b, resamples=2000)
    assert (v["oracle"].gain.mean, v["oracle"].gain.low, v["oracle"].gain.high) == pytest.approx(
        (want.mean, want.low, want.high))
    cv = tuner.cross_validate(mat.index(Setting(0, tuple(StageSetting(ss.enabled, ss.rerank, ss.keep, ss.combine)
                                                          for ss in current_setting(col.specs).stages))))
    assert cv["folds"] == 5 and len(cv["chosen_per_fold"]) == 5 and 0 < cv["tuned_ndcg@10"] <= 1
    g = cv["gain"]
    assert g["ci_low"] <= g["mean"] <= g["ci_high"] and g["mean"] == pytest.approx(
        cv["tuned_ndcg@10"] - cv["current_ndcg@10"], abs=1e-4)


def test_the_proposal_is_a_profile_that_loads_and_diffs(tiny, collected, matrix):
    casc, col = collected
    mat = matrix
    tuner = Tuner(col, mat, tolerance=0.0, folds=5, resamples=500)
    s = mat.settings[tuner.decide(list(range(len(col.queries)))).setting]
    edit = profile_edit(casc.config, "default", col.specs, col.variants[s.fusion].config, s, "tuned here")
    cfg = with_profile(casc.config, "tuned", edit, "tiny.yaml")
    prof = cfg.profile("tuned")
    assert [st.enabled for st in prof.stages] == [False, True]
    # the oracle's combine named the noise stage, which is now off: the proposal drops that source
    assert prof.stages[1].combine is None or "noise" not in prof.stages[1].combine.weights
    d = diff(cfg, "default", "tuned")
    assert d.startswith("--- profile default") and "+  enabled: false" in d
    with pytest.raises(ValueError, match="--name"):
        with_profile(cfg, "tuned", edit, "tiny.yaml")


# ---------------------------------------------------------------------------------------- what may be read


def test_the_evaluation_split_is_refused():
    from cascade.errors import CascadeError

    with pytest.raises(CascadeError, match="--split test: test is scifact's evaluation split"):
        tuning_mode(["test", "train"], "test", None, "scifact")
    with pytest.raises(CascadeError, match="--holdout train"):
        tuning_mode(["test", "train"], "train", "train", "scifact")
    with pytest.raises(CascadeError, match="--holdout test: it is the split being tuned on"):
        tuning_mode(["test"], "test", "test", "npl")  # a collection tuned by CV on its only split holds out nothing
    assert tuning_mode(["test", "train"], "train", "test", "scifact") == "split"
    assert tuning_mode(["test"], "test", None, "cranfield") == "cv"


def test_the_cli_refuses_to_tune_on_test(cli_env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cascade.cli import app
    from cascade.settings import get_settings

    data = tmp_path / "data" / "mini"
    (data / "qrels").mkdir(parents=True)
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "solar"}\n')
    (data / "corpus.jsonl").write_text('{"_id": "d1", "title": "t", "text": "x"}\n')
    for split in ("train", "test"):
        (data / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    monkeypatch.setenv("CASCADE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    res = CliRunner().invoke(app, ["tune", "--dataset", "mini", "--split", "test"])
    assert res.exit_code == 2 and "test is mini's evaluation split" in res.output and "--holdout test" in res.output


def test_click_logs_become_position_debiased_labels(tmp_path):
    log = tmp_path / "clicks.jsonl"
    lines = [{"query": "Solar  Panels", "shown": ["d1", "d2", "d3"], "clicked": ["d3"]},
             {"query": "solar panels", "shown": ["d1", "d2", "d3"], "clicked": []},
             {"query": "solar panels", "shown": ["d2", "d1", "d3"], "clicked": ["d1"]}]
    log.write_text("\n".join(json.dumps(x) for x in lines))
    queries, qrels = clicks_to_judgments(log)
    (qid,) = queries  # one query: case and spacing do not make another
    assert queries[qid] == "Solar Panels"
    # d3: clicked once at rank 3 in 3 impressions -> 3/3 = 1.0 (grade 2); d1: once at rank 2 in 3 -> 0.67 (grade 1)
    assert qrels[qid] == {"d1": 1, "d2": 0, "d3": 2}
    log.write_text('{"query": "x", "shown": ["d1"], "clicked": ["d9"]}\n')
    with pytest.raises(Exception, match="were not shown"):
        clicks_to_judgments(log)


def test_judgments_record_the_queries_that_cannot_be_tuned_on(collected):
    casc, col = collected
    assert col.skipped == 0 and col.failed == 0 and len(col.queries) == len(QUERIES)
    assert all(len(qd.variants) == len(col.variants) for qd in col.queries)



def test_ltr_runs_only_over_the_fusion_its_features_came_from():
    from cascade.config import RRFConfig
    from cascade.tuning.space import FusionVariant, StageSpec

    specs = [StageSpec("ltr", "ltr", "rows", "rows", StageSetting(True, None, 100)),
             StageSpec("ce", "cross_encoder", "pairs", "pairs", StageSetting(True, 10))]
    variants = [FusionVariant.of(RRFConfig(k=k)) for k in (60, 10)]
    settings = grid(variants, specs, SPACE)
    assert any(s.fusion == 1 for s in settings)  # other fusions are swept...
    assert all(s.fusion == 0 for s in settings if s.stages[0].enabled)  # ...but not under the LTR stage


def test_a_stage_that_saw_the_tuning_queries_is_judged_as_configured_not_tuned(collected, matrix):
    casc, col = collected
    col.in_sample["oracle"] = "its model was trained on these queries"
    try:
        tuner = Tuner(col, matrix, tolerance=0.0, folds=5, resamples=200)
        cur = col.specs[1].current
        allowed = [s for s, ok in zip(matrix.settings, tuner.frozen) if ok]
        assert allowed and all(not s.stages[1].enabled or s.stages[1] == cur for s in allowed)
        proc = tuner.decide(list(range(len(col.queries))))
        chosen = matrix.settings[proc.setting].stages[1]
        assert chosen == cur or not chosen.enabled
        assert "in-sample" in {v.name: v for v in proc.verdicts}["oracle"].note
    finally:
        col.in_sample.pop("oracle")
