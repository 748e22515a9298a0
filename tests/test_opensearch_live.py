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
