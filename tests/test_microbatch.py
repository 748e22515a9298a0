"""Micro-batching of concurrent cross-encoder requests, on the real minilm-l6-ce-v1 cross-encoder.

Nothing here mocks the model: merging is observed by wrapping the scorer's own
``_run`` (one padded batch in, logits out) with a counter, and failures by
wrapping it with code that raises. Scores from the batcher are compared with
the same scorer's per-request ``score``.
"""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from cascade.errors import ConfigError
from cascade.query import Query
from cascade.settings import Settings
from cascade.models.microbatch import MicroBatcher, supports_micro_batch
from cascade.models.scorers import Batched, CachedPairScorer
from tests.test_rerankers import POISON

BATCH = 8
Q1, Q2, Q3 = "does vitamin d prevent fractures", "statins lower cholesterol", "smoking causes lung cancer"
DOCS = ["Vitamin D supplements reduce the risk of fractures in older adults.",
        "Fractures in the elderly are common. " * 20,
        "Statin therapy lowers LDL cholesterol and cardiovascular events.",
        "Unrelated text about stars and galaxies.",
        "Cigarette smoke contains carcinogens that damage lung tissue.",
        "Calcium and vitamin D: a meta-analysis of randomized trials.",
        "a"]


def docs_of(n: int, shift: int = 0) -> list[str]:
    return [f"{DOCS[(i + shift) % len(DOCS)]} (variant {i})" for i in range(n)]


@pytest.fixture(scope="module")
def scorer():
    import os

    from cascade.models.torch_ce import load_cross_encoder

    models = os.environ.get("CASCADE_MODELS_DIR")
    if not models or not (Path(models) / "minilm-l6-ce-v1").is_dir():
        pytest.skip("CASCADE_MODELS_DIR with minilm-l6-ce-v1 is not available")
    return load_cross_encoder(["minilm-l6-ce-v1"], Settings(models_dir=Path(models)), max_length=128,
                              batch_size=BATCH, dtype="float32")


class CountingRun:
    """Wraps a scorer's real ``_run``: counts calls and rows, and can be told to fail or to hold a call."""

    def __init__(self, scorer, fail=None):
        self.inner, self.fail = scorer._run, fail
        self.calls: list[int] = []
        self.entered, self.release = threading.Event(), None

    def __call__(self, inputs):
        self.calls.append(len(inputs["input_ids"]))
        self.entered.set()
        if self.release is not None:
            self.release.wait(30)
        if self.fail is not None:
            self.fail(inputs)
        return self.inner(inputs)


@pytest.fixture
def counted(scorer, monkeypatch):
    run = CountingRun(scorer)
    monkeypatch.setattr(scorer, "_run", run)  # an instance attribute: score and score_many both call it
    return run


def test_only_local_scorers_can_be_micro_batched(scorer):
    from connectors.rerank_api import RemoteReranker

    assert supports_micro_batch(scorer)
    assert not hasattr(RemoteReranker, "score_many")
    with pytest.raises(TypeError, match="local backends"):
        MicroBatcher(object())


async def test_concurrent_requests_share_passes_and_get_their_own_scores(scorer, counted):
    sizes = [1, 3, 7, 20, 2, 5]
    reqs = [(f"{[Q1, Q2, Q3][i % 3]} {i}", docs_of(n, shift=i)) for i, n in enumerate(sizes)]
    alone = [scorer.score(q, d) for q, d in reqs]
    per_request_calls = len(counted.calls)
    assert per_request_calls == sum(math.ceil(n / BATCH) for n in sizes)

    counted.calls.clear()
    batcher = MicroBatcher(scorer, max_wait_ms=200, max_pairs=1000)  # long wait: all six join one pass
    got = await asyncio.gather(*(batcher.score(q, d) for q, d in reqs))
    for g, a, n in zip(got, alone, sizes):
        assert g.shape == (n,)
        np.testing.assert_allclose(g, a, atol=1e-4)  # fp32: only the padding of the batches differs
    assert batcher.stats.passes == 1 and batcher.stats.requests == len(sizes) and batcher.stats.largest == len(sizes)
    # Pairs of different requests fill the same batches: fewer model calls than request by request.
    assert len(counted.calls) == math.ceil(sum(sizes) / BATCH) < per_request_calls
    assert max(counted.calls) == BATCH and sum(counted.calls) == sum(sizes)


async def test_max_pairs_splits_passes_at_request_boundaries(scorer, counted):
    batcher = MicroBatcher(scorer, max_wait_ms=200, max_pairs=10)
    reqs = [(Q1, docs_of(6)), (Q2, docs_of(6, 1)), (Q3, docs_of(4, 2)), (Q1, docs_of(25, 3))]
    got = await asyncio.gather(*(batcher.score(q, d) for q, d in reqs))
    assert [len(g) for g in got] == [6, 6, 4, 25]
    # 6 | 6 + 4 | 25 (a request larger than max_pairs goes alone, whole)
    assert batcher.stats.passes == 3 and batcher.stats.requests == 4
    np.testing.assert_allclose(got[3], scorer.score(Q1, docs_of(25, 3)), atol=1e-4)


async def test_a_lone_request_is_not_kept_waiting_for_company(scorer):
    batcher = MicroBatcher(scorer, max_wait_ms=20, max_pairs=10_000)
    got = await asyncio.wait_for(batcher.score(Q1, DOCS), timeout=60)  # completes: max_wait_ms ends the wait
    np.testing.assert_allclose(got, scorer.score(Q1, DOCS), atol=1e-4)
    assert batcher.stats.passes == 1
    assert (await batcher.score(Q1, [])).shape == (0,)  # nothing to score: no pass
    assert batcher.stats.passes == 1


async def test_poisoned_documents_cost_only_their_own_request(scorer, counted):
    clean = (Q2, docs_of(9, 2))
    expected = scorer.score(*clean)
    batcher = MicroBatcher(scorer, max_wait_ms=200, max_pairs=1000)
    poisoned, other = await asyncio.gather(batcher.score(Q1, POISON), batcher.score(*clean))
    assert batcher.stats.passes == 1
    np.testing.assert_allclose(other, expected, atol=1e-4)
    assert poisoned.shape == (len(POISON),) and np.isfinite(poisoned[[0, 1, 2, 3, 7]]).all()
    # None, "" and blanks are not scored (NaN): the stage gives them its fallback over its whole window.
    assert np.isnan(poisoned[[4, 5, 6]]).all()
    np.testing.assert_allclose(poisoned, scorer.score(Q1, POISON), atol=1e-4)


async def test_a_row_the_model_refuses_is_retried_alone_and_the_other_requests_keep_their_scores(scorer, monkeypatch):
    bad = scorer.encoder.single.encode("poison", add_special_tokens=False).ids[0]

    def refuse(inputs):
        if (inputs["input_ids"] == bad).any():
            raise RuntimeError("cannot score this row")

    a, b = (Q1, ["Vitamin D and bones", "poison poison poison", "Fractures of the hip"]), (Q2, docs_of(10, 1))
    expected_b = scorer.score(*b)
    expected_a = scorer.score(a[0], [a[1][0], a[1][2]])
    run = CountingRun(scorer, fail=refuse)
    monkeypatch.setattr(scorer, "_run", run)
    batcher = MicroBatcher(scorer, max_wait_ms=200, max_pairs=1000)
    got_a, got_b = await asyncio.gather(batcher.score(*a), batcher.score(*b))
    assert 1 in run.calls  # the batch holding the bad row was retried row by row
    np.testing.assert_allclose(got_b, expected_b, atol=1e-4)
    np.testing.assert_allclose(got_a[[0, 2]], expected_a, atol=1e-4)
    assert np.isnan(got_a[1])  # the refused row: not scored; the stage gives it the fallback


async def test_a_broken_model_fails_every_waiting_request_then_the_batcher_recovers(scorer, monkeypatch):
    def broken(inputs):
        raise RuntimeError("model is broken")

    run = CountingRun(scorer, fail=broken)
    monkeypatch.setattr(scorer, "_run", run)
    batcher = MicroBatcher(scorer, max_wait_ms=200, max_pairs=1000)
    results = await asyncio.gather(*(batcher.score(q, docs_of(n)) for q, n in ((Q1, 3), (Q2, 9), (Q3, 1))),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "model is broken" in str(r) for r in results)
    assert batcher.stats.passes == 1 and batcher.stats.failed_passes == 1

    run.fail = None  # the model works again: the same batcher serves the next requests
    got = await asyncio.gather(batcher.score(Q1, DOCS), batcher.score(Q2, docs_of(3)))
    np.testing.assert_allclose(got[0], scorer.score(Q1, DOCS), atol=1e-4)
    assert batcher.stats.passes == 2 and batcher.stats.failed_passes == 1


async def test_a_cancelled_waiter_is_dropped_and_the_others_are_served(scorer, counted):
    batcher = MicroBatcher(scorer, max_wait_ms=300, max_pairs=1000)
    keep1 = asyncio.create_task(batcher.score(Q1, docs_of(4)))
    gone = asyncio.create_task(batcher.score(Q2, docs_of(50)))
    keep2 = asyncio.create_task(batcher.score(Q3, docs_of(3, 1)))
    await asyncio.sleep(0.01)  # all three are queued, the worker waits for company
    gone.cancel()
    got1, got2 = await asyncio.gather(keep1, keep2)
    assert gone.cancelled() and batcher.stats.cancelled == 1
    assert batcher.stats.requests == 2 and sum(counted.calls) == 4 + 3  # the cancelled request was never scored
    np.testing.assert_allclose(got1, scorer.score(Q1, docs_of(4)), atol=1e-4)
    np.testing.assert_allclose(got2, scorer.score(Q3, docs_of(3, 1)), atol=1e-4)


async def test_a_waiter_cancelled_during_its_pass_does_not_break_the_batcher(scorer, counted):
    batcher = MicroBatcher(scorer, max_wait_ms=0, max_pairs=1000)
    counted.release = threading.Event()
    first = asyncio.create_task(batcher.score(Q1, docs_of(5)))
    assert await asyncio.to_thread(counted.entered.wait, 30)  # the pass is in the model thread now
    queued = asyncio.create_task(batcher.score(Q2, docs_of(3)))  # arrives while the model is busy
    await asyncio.sleep(0)
    first.cancel()
    counted.release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    got = await asyncio.wait_for(queued, 60)
    np.testing.assert_allclose(got, scorer.score(Q2, docs_of(3)), atol=1e-4)
    assert batcher.stats.passes == 2 and batcher.stats.failed_passes == 0
    np.testing.assert_allclose(await batcher.score(Q3, DOCS), scorer.score(Q3, DOCS), atol=1e-4)


def test_one_batcher_serves_one_event_loop_after_another(scorer):
    batcher = MicroBatcher(scorer, max_wait_ms=5)

    async def both():
        return await asyncio.gather(batcher.score(Q1, DOCS), batcher.score(Q2, DOCS))

    first, second = asyncio.run(both()), asyncio.run(both())
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert batcher.stats.passes == 2


async def test_the_pair_cache_in_front_of_the_batcher_queues_only_its_misses(scorer):
    """Composed at build time: cache -> batcher -> model, all async (no thread waits on the event loop)."""
    from connectors.score_cache import MemoryPairStore

    batched = Batched(scorer, max_wait_ms=200, max_pairs=1000)
    cached = CachedPairScorer(batched, MemoryPairStore(), 60)
    got = await asyncio.gather(cached.score(Q1, DOCS), cached.score(Q2, docs_of(5)))
    assert batched.batcher.stats.passes == 1 and batched.batcher.stats.requests == 2
    np.testing.assert_allclose(got[0], scorer.score(Q1, DOCS), atol=1e-4)
    again = await cached.score(Q1, DOCS)  # all cached: the batcher is not asked
    np.testing.assert_allclose(again, got[0])
    assert batched.batcher.stats.requests == 2
    await cached.close()


# --- ONNX Runtime backend ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_scorer(scorer, tmp_path_factory):  # (scorer: skips without the model)
    import os

    from cascade.models.onnx_export import export_onnx
    from cascade.models.onnx_ce import load_onnx_cross_encoder

    settings = Settings(models_dir=Path(os.environ["CASCADE_MODELS_DIR"]))
    out = tmp_path_factory.mktemp("onnx") / "minilm-onnx"
    export_onnx("minilm-l6-ce-v1", settings, out, int8=False)
    return load_onnx_cross_encoder([str(out)], settings, max_length=128, batch_size=BATCH)


async def test_onnx_scorer_is_micro_batched_the_same_way(onnx_scorer, monkeypatch):
    run = CountingRun(onnx_scorer)
    monkeypatch.setattr(onnx_scorer, "_run", run)
    reqs = [(Q1, docs_of(7)), (Q2, docs_of(2, 3)), (Q3, POISON)]
    alone = [onnx_scorer.score(q, d) for q, d in reqs]
    run.calls.clear()
    batcher = MicroBatcher(onnx_scorer, max_wait_ms=200, max_pairs=1000)
    got = await asyncio.gather(*(batcher.score(q, d) for q, d in reqs))
    for g, a in zip(got, alone):
        np.testing.assert_allclose(g, a, atol=1e-4)
    assert batcher.stats.passes == 1 and len(run.calls) == math.ceil((7 + 2 + 5) / BATCH)


# --- the stage and its config ---------------------------------------------------------------------------------------

def _ce(**extra) -> dict:
    return {"type": "cross_encoder", "model": "minilm-l6-ce-v1", "rerank": 5, **extra}


@pytest.mark.parametrize("stage, error", [
    (_ce(backend="tei", url="http://tei:8080", micro_batch={}), "micro_batch"),
    (_ce(backend="cohere", url="http://x", micro_batch={"max_wait_ms": 1}), "micro_batch"),
    (_ce(micro_batch={"max_wait": 1}), "max_wait"),
    (_ce(micro_batch={"max_pairs": 0}), "max_pairs"),
    (_ce(micro_batch={"max_wait_ms": -1}), "max_wait_ms"),
])
def test_micro_batch_config_errors_name_the_key(stage, error):
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError, match=error):
        tiny_config(stages=[stage])


def test_micro_batch_config_defaults_and_dumps_back():
    import yaml

    from cascade.config import dump_config, parse_config
    from tests.conftest import TINY_CONFIG

    cfg = parse_config({**TINY_CONFIG, "stages": [_ce(micro_batch={})]}, "t.yaml")
    mb = cfg.stages[0].micro_batch
    assert (mb.max_wait_ms, mb.max_pairs) == (2.0, 256)
    assert parse_config(yaml.safe_load(dump_config(cfg)), "t.yaml") == cfg
    assert parse_config({**TINY_CONFIG, "stages": [_ce()]}, "t.yaml").stages[0].micro_batch is None  # off by default


async def test_a_cascade_with_micro_batch_builds_and_scores_concurrent_searches(tiny_index, models_dir):
    from cascade.controller import Cascade
    from cascade.builder import open_cascade
    from tests.conftest import tiny_config

    _, settings = tiny_index
    plain = open_cascade(tiny_config(stages=[_ce(dtype="float32")]), settings)
    batched = open_cascade(tiny_config(stages=[_ce(dtype="float32", micro_batch={"max_wait_ms": 50})]), settings)
    stage = batched.stages[-1]
    assert isinstance(stage.scorer, Batched)
    texts = ["solar electricity storage", "protein folding", "wind farms", "fish in the deep sea"]
    want = [await plain.search(Query(t, size=10)) for t in texts]
    got = await asyncio.gather(*(batched.search(Query(t, size=10)) for t in texts))
    for w, g in zip(want, got):
        assert g.degraded == [] and g.traces[-1].scored == 5
        assert g.candidates.ids[:5] == w.candidates.ids[:5]
        np.testing.assert_allclose(g.candidates.stage_scores["cross_encoder"][:5],
                                   w.candidates.stage_scores["cross_encoder"][:5], atol=1e-4)
    stats = stage.scorer.batcher.stats
    assert stats.requests == len(texts) and stats.passes <= len(texts)
