"""The cascade against a real OpenSearch cluster: set OPENSEARCH_URL to run (skipped otherwise).

    docker compose up -d opensearch
    OPENSEARCH_URL=https://localhost:9200 OPENSEARCH_USERNAME=admin \\
    OPENSEARCH_PASSWORD=... OPENSEARCH_VERIFY_CERTS=false .venv/bin/pytest -q -m opensearch_live

It indexes the tiny test corpus (and a slice of MED when CASCADE_DATA_DIR has
it) into throwaway indexes, checks BM25, kNN (lucene HNSW with filters), the
one-round-trip cascade and a native hybrid query through a search pipeline,
then deletes what it created.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import pytest

from cascade.controller import Cascade
from cascade.builder import open_cascade
from cascade.query import Query
from tests.conftest import TINY_CONFIG, TINY_DOCS

URL = os.environ.get("OPENSEARCH_URL")
pytestmark = [pytest.mark.opensearch_live,
              pytest.mark.skipif(not URL, reason="OPENSEARCH_URL is not set (a real cluster; see docker-compose.yml)")]


def backend_section(index: str, **extra) -> dict:
    b = {"type": "opensearch", "hosts": [URL], "index": index, "timeout_s": 30,
         "verify_certs": os.environ.get("OPENSEARCH_VERIFY_CERTS", "true").lower() not in ("0", "false", "no")}
    if os.environ.get("OPENSEARCH_USERNAME"):
        b.update(username=os.environ["OPENSEARCH_USERNAME"], password_env="OPENSEARCH_PASSWORD")
    return {**b, **extra}


@pytest.fixture
def live_index(settings):
    from cascade.config import parse_config
    from connectors.opensearch.admin import load_corpus

    name = f"cascade-test-{uuid.uuid4().hex[:8]}"
    data = json.loads(json.dumps(TINY_CONFIG))
    data["backend"] = backend_section(name)
    cfg = parse_config(data, "tiny.yaml")
    rep = asyncio.run(load_corpus(cfg, ((i + 1, dict(d)) for i, d in enumerate(TINY_DOCS)), settings, source="tiny"))
    assert rep.docs == 6 and not rep.failed
    yield cfg, settings, name
    from connectors.opensearch.client import Cluster

    async def drop():
        await Cluster(cfg.backend, "tiny.yaml").call("DELETE", lambda c: c.indices.delete(index=name))

    asyncio.run(drop())


def test_cascade_end_to_end_with_knn_and_filters(live_index):
    cfg, settings, _ = live_index
    c = open_cascade(cfg, settings)
    res = asyncio.run(c.search(Query("how do batteries store solar power", size=3, filters={"journal": "Energy"})))
    assert not res.degraded and res.hits()[0]["id"] == "d5"
    assert {h["id"] for h in res.hits()} <= {"d1", "d2", "d5"}
    knn = c.retrievers["knn"]
    from cascade.query import validate_query

    q = validate_query(Query("marine animals that emit light"), {n: f.type for n, f in cfg.fields.items()}, 100, 1000)
    assert asyncio.run(knn.retrieve(q, 3))[0].id == "d6"


def test_native_hybrid_query(live_index):
    from cascade.config import parse_config
    from connectors.opensearch.client import Cluster

    cfg, settings, name = live_index
    pipeline = f"{name}-hybrid"
    cluster = Cluster(cfg.backend, "tiny.yaml")
    body = {"phase_results_processors": [{"normalization-processor": {
        "normalization": {"technique": "min_max"}, "combination": {"technique": "arithmetic_mean"}}}]}

    async def put():
        await cluster.call("PUT pipeline", lambda c: c.transport.perform_request(
            "PUT", f"/_search/pipeline/{pipeline}", body=body))

    asyncio.run(put())
    data = json.loads(json.dumps(TINY_CONFIG))
    data["backend"] = backend_section(name, hybrid_pipeline=pipeline)
    hyb = parse_config(data, "tiny.yaml")
    res = asyncio.run(open_cascade(hyb, settings).search(Query("solar electricity storage", size=3)))
    assert not res.degraded and res.hits()[0]["id"] in {"d1", "d5"}

    async def drop():
        await cluster.call("DELETE pipeline", lambda c: c.transport.perform_request(
            "DELETE", f"/_search/pipeline/{pipeline}"))

    asyncio.run(drop())


def test_field_stats_from_termvectors(live_index):
    from connectors.opensearch import OpenSearchBackend

    cfg, settings, _ = live_index
    st = asyncio.run(OpenSearchBackend(cfg, settings).field_stats("text", ["electricity", "solar"]))
    assert st.doc_freq.get("electr") == 3 and st.total_docs == 6 and st.avg_length > 0


def test_ltr_trained_from_cluster_features_on_scifact_beside_the_embedded_backend(settings, data_dir, tmp_path):
    """Index SciFact (BM25 only) in the cluster, log features there for the train judgments, train LTR, and
    evaluate it on the test split beside the same recipe on the embedded backend. Prints both nDCG@10
    (and writes them to $CASCADE_LIVE_REPORT when set)."""
    from cascade.config import parse_config
    from cascade.datasets import corpus_file, iter_corpus, load_qrels, load_queries
    from cascade.evaluation import evaluate
    from connectors.embedded import build_index
    from connectors.opensearch.admin import load_corpus
    from connectors.opensearch.client import Cluster
    from features.logging import log_features
    from features.training.ltr import train_ltr

    folder = data_dir / "scifact"
    if not folder.is_dir():
        pytest.skip("CASCADE_DATA_DIR has no scifact")
    queries = load_queries(folder)
    train, test = load_qrels(folder, "train"), load_qrels(folder, "test")
    name = f"cascade-test-scifact-{uuid.uuid4().hex[:8]}"
    base = {"fields": {"title": {"type": "text"}, "text": {"type": "text"}},
            "retrievers": {"bm25": {"type": "bm25", "k": 100}}, "fusion": {"method": "rrf", "keep": 100},
            "features": {"version": 1, "semantic": False}}
    on_cluster = parse_config({"index": "scifact-live", "backend": backend_section(name), **base}, "scifact-live.yaml")
    embedded = parse_config({"index": "scifact-live", **base}, "scifact-live.yaml")
    asyncio.run(load_corpus(on_cluster, iter_corpus(corpus_file(folder)), settings, source="scifact"))
    build_index(embedded, iter_corpus(corpus_file(folder)), settings, source="scifact")
    results = {}
    try:
        for label, cfg in (("opensearch", on_cluster), ("embedded", embedded)):
            log = tmp_path / f"{label}.parquet"
            asyncio.run(log_features(open_cascade(cfg, settings, stages=False), queries, train, log, source=label))
            model = tmp_path / f"ltr-{label}"
            train_ltr([log], model)
            ranked = parse_config({**cfg.model_dump(mode="json"), "stages": [
                {"type": "ltr", "model": str(model), "rerank": 100}]}, "scifact-live.yaml")
            report = asyncio.run(evaluate(open_cascade(ranked, settings), queries, test, dataset="scifact",
                                          split="test"))
            results[label] = {s.name: round(s.ndcg_10, 4) for s in report.stages}
            assert results[label]["ltr"] > results[label]["fusion"], results
        print("\nSciFact test nDCG@10, LTR trained on train-split features:", json.dumps(results))
        if os.environ.get("CASCADE_LIVE_REPORT"):
            with open(os.environ["CASCADE_LIVE_REPORT"], "w") as fh:
                json.dump(results, fh, indent=2)
    finally:
        async def drop():
            await Cluster(on_cluster.backend, "scifact-live.yaml").call(
                "DELETE", lambda c: c.indices.delete(index=name))

        asyncio.run(drop())
