"""`cascade plan`: the simulator's arithmetic against hand-worked cases and queueing theory, the cited formulas, and
the fleet search on measured inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cascade.planning import figures as F
from cascade.planning.hnsw import HnswFit, measure_hnsw
from cascade.planning.plan import Measured, Params, make_plan, memory
from cascade.planning.simulate import (Station, Visit, md1_mean_wait_ms, mmc_mean_wait_ms, poisson_arrivals,
                                       simulate)


def test_no_queueing_latency_is_the_sum_of_services():
    st = [Station("replica", 1), Station("gpu", 1)]
    arrivals = [0.0, 100.0, 200.0]
    routes = [[Visit(0, 5.0), Visit(1, 7.0), Visit(0, 1.0)]] * 3
    res = simulate(arrivals, routes, st)
    assert res.latency_ms.tolist() == [13.0, 13.0, 13.0] and res.wait_ms == {"replica": 0.0, "gpu": 0.0}


def test_fifo_queueing_by_hand():
    # one server, 10 ms each: the second (at 1 ms) waits 9 ms, the third (at 2 ms) waits 18 ms
    res = simulate([0.0, 1.0, 2.0], [[Visit(0, 10.0)]] * 3, [Station("s", 1)])
    assert res.latency_ms.tolist() == [10.0, 19.0, 28.0]
    # two servers: the third waits for the first free one
    res = simulate([0.0, 0.0, 0.0], [[Visit(0, 10.0)]] * 3, [Station("s", 2)])
    assert sorted(res.latency_ms.tolist()) == [10.0, 10.0, 20.0] and res.wait_ms["s"] == pytest.approx(10 / 3)
    # a query's second visit to a pool queues behind one that arrived in between
    res = simulate([0.0, 1.0], [[Visit(0, 2.0), Visit(1, 5.0), Visit(0, 2.0)], [Visit(0, 10.0)]],
                   [Station("cpu", 1), Station("io", 1)])
    assert res.latency_ms.tolist() == [2 + 5 + (12 - 7) + 2, 11.0]


def test_mm1_matches_theory():
    rng = np.random.default_rng(1)
    n, lam, s = 40_000, 50.0, 10.0  # rho = 0.5
    arr = poisson_arrivals(lam, n, seed=2)
    res = simulate(arr, [[Visit(0, x)] for x in rng.exponential(s, n)], [Station("s", 1)], warmup=2000)
    assert res.mean == pytest.approx(1000 / (1000 / s - lam), rel=0.06)  # 1 / (mu - lambda) = 20 ms
    assert res.pct(95) == pytest.approx(-np.log(0.05) * 20.0, rel=0.08)  # sojourn ~ Exp(mu - lambda)
    assert res.utilization["s"] == pytest.approx(0.5, abs=0.02)


def test_mmc_matches_erlang_c_and_md1_matches_pollaczek_khinchine():
    rng = np.random.default_rng(3)
    n = 40_000
    lam, s, c = 210.0, 10.0, 3  # offered load 2.1, rho 0.7
    res = simulate(poisson_arrivals(lam, n, seed=4), [[Visit(0, x)] for x in rng.exponential(s, n)],
                   [Station("s", c)], warmup=2000)
    assert res.wait_ms["s"] == pytest.approx(mmc_mean_wait_ms(lam, s, c), rel=0.1)
    res = simulate(poisson_arrivals(70.0, n, seed=5), [[Visit(0, 10.0)]] * n, [Station("s", 1)], warmup=2000)
    assert res.wait_ms["s"] == pytest.approx(md1_mean_wait_ms(70.0, 10.0), rel=0.08)  # rho 0.7: 11.7 ms


def test_cited_formulas():
    assert F.hnsw_bytes_per_vector(384, 16, "fp32") == pytest.approx(1.1 * (4 * 384 + 8 * 16))
    assert F.hnsw_bytes_per_vector(768, 16, "fp16") == pytest.approx(1.1 * (2 * 768 + 128))
    assert F.hnsw_bytes_per_vector(768, 16, "byte") == pytest.approx(1.1 * (768 + 128))
    assert F.hnsw_bytes_per_vector(768, 16, "binary") == pytest.approx(1.1 * (768 / 8 + 128))
    # OpenSearch's own example: a 100 GB node with a 32 GB heap gives k-NN half of the other 68 GB (we cap at 31)
    assert F.knn_budget_bytes(100) / 2**30 == pytest.approx(0.5 * (100 - 31))
    assert F.search_threads(8) == 13 and F.search_threads(2) == 4
    assert F.bm25_shard_ms(3.0, 2_000_000, 5_000) == pytest.approx(3.0 + 2.8 * 1.995)
    m = memory(Params(docs=10_000_000, qps=50, p95_ms=1000))
    assert m["vectors_total_gib"] == pytest.approx(10_000_000 * 1830.4 * 2 / 2**30, rel=1e-3)
    assert m["nodes_for_vectors"] == 3  # 34.1 GiB over 16.5 GiB of k-NN memory per 64 GiB node


def _measured(ce_ms_per_pair: float = 15.0) -> Measured:
    rng = np.random.default_rng(0)
    return Measured("test", 5_000, list(rng.uniform(2, 6, 200)), 20.0, 0.3, {"fixed_ms": 1.0, "per_unit_ms": 0.01},
                    {"fixed_ms": 0.5, "per_unit_ms": 0.001}, {"fixed_ms": 5.0, "per_unit_ms": ce_ms_per_pair},
                    [180] * 200, [{"depth": 0, "ndcg@10": 0.70}, {"depth": 10, "ndcg@10": 0.78},
                                  {"depth": 30, "ndcg@10": 0.781}], {"bm25": {"10": 0.6}}, 0.0, "cross_encoder")


def test_the_plan_meets_its_target_and_sizes_each_pool():
    hnsw = HnswFit("test", 384, 16, 128, 0.1, 0.05, [(10_000, 0.8)])
    p = Params(docs=10_000_000, qps=50, p95_ms=400, queries=3000)
    plan = make_plan(_measured(), hnsw, p)
    rec = plan.chosen
    assert rec is not None and rec.sim.p95 <= 400 and max(rec.sim.utilization.values()) < 0.9
    # depth 30 is within 0.005 of depth 10's quality but needs as much or more: depth 10 is recommended
    assert rec.depth == 10 and rec.hardware.nodes >= 3 and rec.hardware.shards == 5
    by = {o.depth: o for o in plan.options}
    assert by[30].hardware.gpus >= by[10].hardware.gpus
    # the GPU's load: 50 q/s x (2 ms + 10 pairs / 1800 pairs/s) = 0.38 of one server
    assert rec.sim.utilization["gpu"] == pytest.approx(50 * (2 + 10 / 1800 * 1000) / 1000 / rec.hardware.gpus, rel=0.1)
    # every input is listed with a source
    assert all(a.get("source") for a in plan.assumptions) and json.dumps(plan.as_json())
    # without a GPU the cross-encoder's 155 ms per query lands on the replicas: more of them
    cpu = make_plan(_measured(), hnsw, Params(docs=10_000_000, qps=50, p95_ms=400, gpu="none", queries=3000))
    assert cpu.chosen.hardware.replicas > rec.hardware.replicas and cpu.chosen.hardware.gpus == 0


def test_an_impossible_target_is_reported_not_faked():
    hnsw = HnswFit("test", 384, 16, 128, 0.1, 0.05, [(10_000, 0.8)])
    plan = make_plan(_measured(ce_ms_per_pair=80.0), hnsw, Params(docs=10_000_000, qps=5, p95_ms=200, gpu="none",
                                                                   queries=1000))
    by = {o.depth: o for o in plan.options}
    assert by[30].hardware is None and "no amount of hardware" in by[30].note
    assert plan.chosen is not None and plan.chosen.depth == 0  # only the cascade without the cross-encoder fits


def test_inputs_come_from_a_tune_report():
    data = {"index": "x", "costs": {"corpus_docs": 5183, "retriever_ms_samples": {"bm25": [3.0, 4.0], "knn": [20.0]},
                                    "embed_ms": 12.0, "fusion_ms": 0.4, "fused_candidates": [170, 180],
                                    "units": {"features": {"unit": "candidates", "fixed_ms": 1.0,
                                                           "ms_per_candidate": 0.01, "calls_measured": 10},
                                              "ltr": {"unit": "rows", "fixed_ms": 0.5, "ms_per_row": 0.001},
                                              "cross_encoder": {"unit": "pairs", "fixed_ms": 3.0, "ms_per_pair": 14.0}}},
            "curves": {"depth": {"cross_encoder": [{"depth": 0, "ndcg@10": 0.7}, {"depth": 10, "ndcg@10": 0.77}]},
                       "recall": {"bm25": {"10": 0.5}}},
            "early_exit": [], "holdout": {"early_exit": {"cross_encoder": {"exited_share": 0.4}}}}
    m = Measured.from_tune(data, "t.json")
    assert m.ce == {"fixed_ms": 3.0, "per_unit_ms": 14.0} and m.ltr["per_unit_ms"] == 0.001
    assert m.exit_share == 0.4 and m.bm25_ms == [3.0, 4.0] and m.depth_curve[1]["depth"] == 10


def test_hnsw_timing_grows_with_the_graph():
    base = np.random.default_rng(0).normal(size=(500, 32)).astype(np.float32)
    fit = measure_hnsw(base, sizes=(1000, 4000), queries=50, k=10, ef_search=32)
    assert fit.dims == 32 and len(fit.points) == 2 and all(ms > 0 for _, ms in fit.points)
    assert fit.ms(1e7) >= fit.ms(4000) * 0.99 and fit.source.startswith("jittered")
