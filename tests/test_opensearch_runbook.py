"""docs/opensearch.md, step by step, as a user runs it: from an index that exists in a cluster to a trained cascade.

The cluster is osmem (a real HTTP server speaking the OpenSearch API; no kNN,
and its ``_score`` is not Lucene's, so no step asserts a score's value) holding
the MED collection (1,033 abstracts, 30 judged queries). Every step is the CLI
command or HTTP call the runbook shows, in its order; the live-cluster suite
(tests/test_opensearch_live.py, OPENSEARCH_URL) runs the same path on SciFact.
"""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from cascade.cli import app

osmem_server = pytest.importorskip("osmem_server", reason="osmem-server is not installed (pip install -e '.[dev]')")
pytest.importorskip("opensearchpy", reason="opensearch-py is not installed")


def cli(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, f"cascade {' '.join(args)}\n{r.output}"
    return r.output


@pytest.fixture
def cluster_with_med(cli_env, data_dir, monkeypatch):
    """osmem holding the MED corpus in the index ``med-docs``, loaded the way any tool might have."""
    monkeypatch.setenv("CASCADE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CASCADE_TRAINED_DIR", str(cli_env / "models"))
    server = osmem_server.OsmemServer.start(freeze=False, japanese=False)
    loader = cli_env / "loader.yaml"
    loader.write_text(yaml.safe_dump({
        "index": "loader", "backend": {"type": "opensearch", "hosts": [server.url], "index": "med-docs"},
        "fields": {"title": {"type": "text"}, "text": {"type": "text"}},
        "retrievers": {"bm25": {"type": "bm25", "k": 100}}, "fusion": {"method": "rrf", "keep": 100},
    }))
    cli("index", "--dataset", "med", "--index", "loader", "--config", str(loader), "--backend", "opensearch")
    loader.unlink()  # from here on, only the cluster knows the index
    yield server.url, cli_env
    server.close()


def test_the_runbook_from_an_existing_index_to_a_served_ltr_profile(cluster_with_med):
    url, tmp = cluster_with_med
    config = tmp / "configs" / "med-os.yaml"

    # 1. Point cascade at the index: the config is written from its mapping.
    out = cli("config", "discover", "--host", url, "--index", "med-docs", "--name", "med-os")
    assert str(config) in " ".join(out.split()).replace(" ", "") or "med-os.yaml" in out
    data = yaml.safe_load(config.read_text())
    assert data["backend"] == {"type": "opensearch", "hosts": [url], "index": "med-docs"}
    assert data["fields"] == {"title": {"type": "text", "analyzer": "english"},
                              "text": {"type": "text", "analyzer": "english"}}
    assert list(data["retrievers"]) == ["bm25"] and data["features"]["version"] == 1
    assert "ok" in cli("config", "check", str(tmp / "configs"))
    refused = CliRunner().invoke(app, ["config", "discover", "--host", url, "--index", "med-docs", "--name", "med-os"])
    assert refused.exit_code != 0 and "--force" in refused.output

    # 2. Log features for the judgments, through the path live searches take (keyword features from the cluster).
    log = tmp / "logs" / "med-os.parquet"
    cli("features", "log", "--dataset", "med", "--split", "test", "--index", "med-os", "--out", str(log))
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(log).metadata[b"cascade"])
    assert meta["keyword_source"] == "opensearch" and "kw.text.bm25" in meta["feature_names"]

    # 3. Train the LTR model on them.
    cli("train", "ltr", "--data", str(log), "--out", "med-os-ltr", "--rounds", "30")
    assert (tmp / "models" / "med-os-ltr" / "model.txt").is_file()

    # 4. Add a profile with the LTR stage, and evaluate both profiles on the same queries.
    data["profiles"] = {"ltr": {"inherit": "default", "stages": [{"type": "ltr", "model": "med-os-ltr", "rerank": 100}]}}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    report = tmp / "eval.json"
    cli("eval", "--dataset", "med", "--split", "test", "--index", "med-os", "--profile", "default",
        "--profile", "ltr", "--json", str(report))
    got = json.loads(report.read_text())
    text = json.dumps(got)
    assert "ltr" in text and "ndcg" in text.lower()

    # 5. Search with the profile: each hit carries its features, the trace the feature round trip.
    out = json.loads(cli("search", "--index", "med-os", "--profile", "ltr", "--explain", "--json",
                         "the crystalline lens in vertebrates"))
    assert [t["name"] for t in out["trace"]] == ["bm25", "fusion", "keyword_features", "features", "ltr"]
    assert "kw.text.bm25" in out["hits"][0]["features"] and out["degraded"] == []

    # 6. Serve it.
    from fastapi.testclient import TestClient

    from cascade.service import create_app
    from cascade.service.registry import ConfigSource
    from cascade.settings import Settings

    settings = Settings(config_dir=tmp / "configs", index_dir=tmp / "idx", cache_dir=tmp / "cache",
                        trained_dir=tmp / "models")
    with TestClient(create_app(settings, ConfigSource(directory=tmp / "configs"))) as client:
        import time

        for _ in range(600):
            if client.get("/readyz").json()["status"] != "loading":
                break
            time.sleep(0.05)
        assert client.get("/readyz").json()["status"] == "ready", client.get("/readyz").text
        r = client.post("/v1/indexes/med-os/search", json={"query": "the crystalline lens in vertebrates",
                                                           "profile": "ltr", "size": 5})
        assert r.status_code == 200 and r.json()["degraded"] == [] and len(r.json()["hits"]) == 5
