"""Clicks to labels: position-bias estimators on simulated position-based users, debiased labels, and the loop
from a real service (RandPair in an experiment, events, `cascade train labels`, `features log --qrels`,
`train ltr`), with evaluation queries refused."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from cascade.cli import app
from cascade.experiments.clicks import model as click_model
from features.training import labels as lab
from tests.service_fixtures import ServerThread, make_settings, redis_server, tiny_index_dir, wait_until, write_config  # noqa: F401

runner = CliRunner()


def synthetic_log(impressions: int, share: float, seed: int = 0, queries: int = 120, docs: int = 12) -> lab.ClickLog:
    """Position-based users (eta 1, epsilon 0.1) over two rankers of random relevance, RandPair on ``share``."""
    rng = np.random.default_rng(seed)
    users = click_model("pbm", eta=1.0, epsilon=0.1)
    rel = {q: rng.random(docs) < 0.25 for q in range(queries)}
    rankers = [{q: list(rng.permutation(docs))[:10] for q in range(queries)} for _ in range(2)]
    b = lab.LogBuilder()
    for i in range(impressions):
        q, arm = int(rng.integers(queries)), int(rng.integers(2))
        shown = list(rankers[arm][q])
        swap = None
        if rng.random() < share:
            k = int(rng.integers(1, 10))
            shown[k - 1], shown[k] = shown[k], shown[k - 1]
            swap = [k, k + 1]
        grades = np.where(rel[q][shown], 4, 0)
        b.add_search({"query_id": f"i{i}", "user_query": f"query {q}", "hits": [f"d{d}" for d in shown],
                      "randomized": {"method": "randpair", "swap": swap}, "experiment": {"arm": str(arm)}})
        for p in users.simulate(grades, rng):
            b.add_event({"action_name": "click", "query_id": f"i{i}", "event_id": f"i{i}:{p}",
                         "event_attributes": {"object": {"object_id": f"d{shown[p]}"}}})
    return b.build()


def test_estimators_recover_the_simulated_position_bias():
    log = synthetic_log(30_000, share=0.3)
    truth = 1.0 / np.arange(1, 11)
    for method, tol in (("harvest", 0.12), ("randpair", 0.35), ("em", 0.25)):
        p = lab.estimate(log, method, 10)
        err = lab.propensity_error(p.values, truth)
        assert err[0] == 0 and err.max() < tol, (method, np.round(p.values, 3))
    assert log.skipped["duplicate_events"] == 0 and log.clicks > 0


def test_ipw_labels_find_relevant_documents_shown_deep():
    log = synthetic_log(30_000, share=0.1, seed=1)
    p = lab.estimate(log, "harvest", 10)
    ipw = lab.click_labels(log, "ipw", propensities=p)
    ctr = lab.click_labels(log, "ctr")
    # Ground truth of the synthetic log: rebuild relevance from the same seed.
    rng = np.random.default_rng(1)
    rel = {f"query {q}": rng.random(12) < 0.25 for q in range(120)}

    def recall_and_precision(labels: lab.Labels) -> tuple[float, float]:
        pos = {(labels.queries[qi], d) for qi, d, g, *_ in labels.rows if g >= 2}
        truly = {(labels.queries[qi], d) for qi, d, *_ in labels.rows if rel[labels.queries[qi]][int(d[1:])]}
        return len(pos & truly) / len(truly), len(pos & truly) / max(len(pos), 1)

    r_ipw, p_ipw = recall_and_precision(ipw)
    r_ctr, _ = recall_and_precision(ctr)
    assert r_ipw > 0.9 and p_ipw > 0.9 and r_ctr < r_ipw - 0.2  # raw CTR misses what was shown low


def test_randomize_config_is_checked():
    from pydantic import ValidationError

    from cascade.experiments.config import ExperimentConfig, Randomization

    with pytest.raises(ValidationError, match="randomize: only ab"):
        ExperimentConfig(mode="interleave", arms=["a", "b"], randomize={"share": 0.1})
    with pytest.raises(ValidationError, match="randomize.arms"):
        ExperimentConfig(mode="ab", arms=["a", "b"], randomize={"share": 0.1, "arms": ["c"]})
    r = Randomization(share=0.5, depth=4)
    assert r.swap(0.6, 0.0, 10) is None and r.swap(0.1, 0.0, 10) == 1 and r.swap(0.1, 0.99, 10) == 3
    assert r.swap(0.1, 0.99, 2) == 1 and r.swap(0.1, 0.5, 1) is None


QUERIES = {"q1": "solar electricity", "q2": "cells genes", "q3": "wind electricity farms", "t1": "deep sea fish"}
TRAIN = {"q1": {"d1": 1}, "q2": {"d4": 1}, "q3": {"d2": 1}}
TEST = {"t1": {"d6": 1}}


@pytest.fixture
def loop(tmp_path, tiny_index_dir, redis_server, monkeypatch):
    from cascade.settings import get_settings

    ds = tmp_path / "tinyset"
    (ds / "qrels").mkdir(parents=True)
    (ds / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    for split, qr in (("train", TRAIN), ("test", TEST)):
        (ds / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"{q}\t{d}\t{g}\n" for q, docs in qr.items() for d, g in docs.items()))
    profiles = {"lexical": {"inherit": "default", "fusion": {"weights": {"knn": 0}}}}
    experiments = {"clicks": {"mode": "ab", "arms": ["default", "lexical"],
                              "randomize": {"method": "randpair", "share": 0.5, "depth": 5}}}
    write_config(tmp_path / "configs", profiles=profiles, experiments=experiments,
                 features={"keyword": {}, "retrieval": True, "semantic": True, "query": True})
    for k, v in {"CASCADE_INDEX_DIR": str(tiny_index_dir), "CASCADE_CONFIG_DIR": str(tmp_path / "configs"),
                 "CASCADE_CACHE_DIR": str(tmp_path / "cache"), "CASCADE_TRAINED_DIR": str(tmp_path / "models"),
                 "CASCADE_REDIS_URL": redis_server.url}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    from cascade.service import create_app
    from cascade.service.registry import ConfigSource

    settings = make_settings(tmp_path, tiny_index_dir, redis_url=redis_server.url)
    with ServerThread(create_app(settings, ConfigSource(directory=tmp_path / "configs")), settings) as srv:
        client = httpx.Client(base_url=srv.url, timeout=30)
        wait_until(lambda: client.get("/readyz").status_code == 200, 120, what="readyz")
        yield client, ds, tmp_path, redis_server
        client.close()
    get_settings.cache_clear()


def _traffic(client, texts, rounds, rng):
    """Users who click the relevant document wherever it is shown, and others with probability 0.6 / rank."""
    served = {}
    for i in range(rounds):
        qid = list(texts)[i % len(texts)]
        body = client.post("/v1/indexes/tiny/search", json={"query": QUERIES[qid], "size": 5,
                                                             "user_id": f"u{i}"}).json()
        ids = [h["id"] for h in body["hits"]]
        good = {**TRAIN, **TEST}[qid]
        events = [{"action_name": "click", "query_id": body["query_id"], "client_id": f"u{i}",
                   "event_attributes": {"object": {"object_id": d}, "position": {"ordinal": p + 1}}}
                  for p, d in enumerate(ids) if d in good or rng.random() < 0.6 / (p + 1)]
        if events:
            assert client.post("/v1/events", json={"events": events}).status_code == 202
        served[body["query_id"]] = ids
    return served


def test_clicks_to_labels_to_ltr_through_the_service(loop):
    import asyncio

    from connectors.events import connect, iterate

    client, ds, tmp, redis = loop
    rng = np.random.default_rng(0)
    served = _traffic(client, ["q1", "q2", "q3"], 60, rng)

    async def records():
        c = connect(redis.url)
        try:
            return [rec async for _, kind, rec in iterate(c) if kind == "q"]
        finally:
            await c.aclose()

    recs = asyncio.run(records())
    assert all(r["hits"] == served[r["query_id"]] and r["randomized"]["method"] == "randpair" for r in recs)
    as_ranked = {(r["user_query"], r["experiment"]["arm"]): r["hits"] for r in recs if r["randomized"]["swap"] is None}
    swapped = [r for r in recs if r["randomized"]["swap"] is not None]
    assert 10 < len(swapped) < 50  # about half of 60
    for r in swapped:  # the ranked list with one adjacent pair of the top 5 exchanged
        k = r["randomized"]["swap"][0]
        assert 1 <= k <= 4 and r["randomized"]["swap"] == [k, k + 1]
        expect = list(as_ranked[(r["user_query"], r["experiment"]["arm"])])
        expect[k - 1], expect[k] = expect[k], expect[k - 1]
        assert r["hits"] == expect

    out = tmp / "labels" / "labels.tsv"
    res = runner.invoke(app, ["train", "labels", "--events", redis.url, "--index", "tiny", "--dataset", str(ds),
                              "--depth", "3", "--min-impressions", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    labels = lab.read_qrels_file(out)[0]
    assert set(labels) == {"q1", "q2", "q3"}  # the dataset's query ids, matched by text
    assert all(labels[q][d] == max(labels[q].values()) > 0 for q, docs in TRAIN.items() for d in docs)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["randomized_impressions"] == len(swapped) and len(meta["propensity"]["propensities"]) == 3

    # Labels from an export-ubi folder are the same labels.
    assert runner.invoke(app, ["experiments", "export-ubi", "--out", str(tmp / "ubi")]).exit_code == 0
    out2 = tmp / "labels" / "from-ubi.tsv"
    res = runner.invoke(app, ["train", "labels", "--events", str(tmp / "ubi"), "--index", "tiny", "--dataset",
                              str(ds), "--depth", "3", "--min-impressions", "5", "--out", str(out2)])
    assert res.exit_code == 0, res.output
    assert lab.read_qrels_file(out2)[0] == labels

    # The labels train an LTR model from traffic alone.
    flog = tmp / "clicks.parquet"
    res = runner.invoke(app, ["features", "log", "--dataset", str(ds), "--index", "tiny", "--qrels", str(out),
                              "--out", str(flog)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", "ltr", "--data", str(flog), "--out", str(tmp / "ltr"), "--valid-fraction", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp / "ltr" / "model.txt").is_file()

    # A test (evaluation) query in the traffic is refused, or dropped when asked.
    _traffic(client, ["t1"], 6, rng)
    res = runner.invoke(app, ["train", "labels", "--events", redis.url, "--index", "tiny", "--dataset", str(ds),
                              "--depth", "3", "--out", str(tmp / "x.tsv")])
    assert res.exit_code == 2 and "evaluation" in res.output and "t1" in res.output
    res = runner.invoke(app, ["train", "labels", "--events", redis.url, "--index", "tiny", "--dataset", str(ds),
                              "--depth", "3", "--min-impressions", "1",
                              "--drop-holdout", "--out", str(tmp / "x.tsv")])
    assert res.exit_code == 0, res.output
    assert "t1" not in lab.read_qrels_file(tmp / "x.tsv")[0]
