"""Evaluation counts what happened: failed steps and failed queries are failures, and no budget applies unasked."""

from __future__ import annotations

import numpy as np

from cascade.builder import open_cascade
from cascade.evaluation import evaluate
from cascade.stages.base import Reranker
from tests.conftest import tiny_config
from tests.service_fixtures import FailingStage, make_settings, tiny_index_dir  # noqa: F401

QUERIES = {"q1": "solar panels", "q2": "wind turbines", "q3": "   "}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d1": 1}}


class Reverse(Reranker):
    kind = "reverse"

    async def score(self, query, candidates, deadline):
        return np.arange(len(candidates), dtype=float)  # the last candidate first


async def test_a_failed_stage_ranks_nothing_and_is_counted(tiny_index_dir, tmp_path):
    """Regression: a failed stage was scored as if it had run (the previous order, evaluated as the stage)."""
    casc = open_cascade(tiny_config(), make_settings(tmp_path, tiny_index_dir))
    casc.stages.append(FailingStage())
    rep = await evaluate(casc, QUERIES, QRELS, dataset="tiny", split="test")
    by = {s.name: s for s in rep.stages}
    assert rep.skipped_queries == 1 and rep.queries == 2  # q3 is blank: an invalid query, skipped and counted
    assert by["flaky"].failed == 2 and by["flaky"].ndcg_10 == 0.0 and by["fusion"].ndcg_10 > 0
    assert rep.errors and "model server went away" in rep.errors[0]


async def test_a_backend_error_is_a_failed_query_not_an_invalid_one(tiny_index_dir, tmp_path):
    """Regression: a backend error was counted as an invalid query (skipped) with no trace of why."""
    casc = open_cascade(tiny_config(), make_settings(tmp_path, tiny_index_dir))

    async def down(query, t0=None):
        raise ConnectionError("cluster unreachable")

    casc.retrieve = down
    rep = await evaluate(casc, QUERIES, QRELS, dataset="tiny", split="test")
    assert rep.failed_queries == 2 and rep.skipped_queries == 1
    assert "ConnectionError: cluster unreachable" in rep.errors[0]


async def test_the_config_budget_does_not_apply_to_evaluation(tiny_index_dir, tmp_path):
    """Regression: `cascade eval` silently applied limits.budget_ms, so stages could be cut while evaluated."""
    casc = open_cascade(tiny_config(limits={"budget_ms": 0.001}), make_settings(tmp_path, tiny_index_dir))
    casc.stages.append(Reverse("reverse"))
    casc._costs.observe("reverse", 1000.0, 1)  # a learned cost far above the budget
    rep = await evaluate(casc, QUERIES, QRELS, dataset="tiny", split="test")
    assert {s.name: s for s in rep.stages}["reverse"].failed == 0
    res = await casc.search(casc.validate(__import__("cascade.query").query.Query("solar panels")),
                            budget_ms=casc.config.limits.budget_ms)
    assert res.budget_skipped == ["reverse"]  # the same budget, passed explicitly, does cut it
