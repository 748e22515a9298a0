"""LTR keyword features on the OpenSearch backend: the cluster's own scoring, one ``_msearch`` per query.

Golden bodies pin the feature queries; osmem (a real HTTP server speaking the
OpenSearch API; its ``_score`` is not Lucene's, so no test asserts a score's
value) runs their mechanics: the ids restriction, candidates a query does not
return, a sub-query the cluster rejects (only its field's features go
missing, flagged; the search and the LTR stage go on), a failed round trip,
and the whole path from a cluster to a trained model that the embedded
backend refuses.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from cascade.builder import open_cascade
from cascade.config import parse_config
from cascade.errors import ConfigError
from cascade.query import Query
from tests.conftest import TINY_CONFIG, TINY_DOCS, tiny_config
from tests.test_opensearch_golden import golden

osmem_server = pytest.importorskip("osmem_server", reason="osmem-server is not installed (pip install -e '.[dev]')")
pytest.importorskip("opensearchpy", reason="opensearch-py is not installed")

from connectors.opensearch import features as F  # noqa: E402
from connectors.opensearch.admin import load_corpus  # noqa: E402
from tests.test_opensearch_osmem import osmem  # noqa: E402,F401  (the session's osmem server)

FEATURES = {"version": 1, "semantic": False}
KW = [f"kw.{f}.{x}" for f in ("title", "text") for x in ("bm25", "coverage", "idf_coverage", "phrase", "log_length")]


def os_config(url: str, **changes):
    data = json.loads(json.dumps(TINY_CONFIG))
    data["backend"] = {"type": "opensearch", "hosts": [url], "timeout_s": 5, "retry_backoff_s": 0.01}
    data["retrievers"] = {"bm25": {"type": "bm25", "k": 10}}
    data["features"] = FEATURES
    data.update(changes)
    return parse_config(data, "tiny.yaml")


@pytest.fixture
def loaded(osmem, settings):
    """The tiny corpus in a fresh osmem clone, and its config with keyword features on."""
    clone = osmem.clone()
    cfg = os_config(clone.url)
    asyncio.run(load_corpus(cfg, ((i + 1, dict(d)) for i, d in enumerate(TINY_DOCS)), settings, source="t"))
    yield cfg, settings
    clone.close()


def features_of(cascade, text: str) -> tuple[dict[str, dict[str, float]], list]:
    q = cascade.validate(Query(text=text, size=10))
    cands, traces = asyncio.run(cascade.candidates(q, features=True))
    names = cands.feature_names
    return {d: dict(zip(names, map(float, row))) for d, row in zip(cands.ids, cands.features)}, traces


def test_feature_query_bodies_are_golden():
    cfg = os_config("http://localhost:9200")
    from connectors.opensearch.backend import OpenSearchBackend

    backend = OpenSearchBackend(cfg, None, check=False)  # type: ignore[arg-type]
    queries = F.OpenSearchKeywordQueries(backend, {"title": "english", "text": "english"})
    tagged, words = queries.plan("The solar panels, and solar storage", ["d1", "d5", "d2"], now=0.0)
    assert words == {"title": ["solar", "panels", "storage"], "text": ["solar", "panels", "storage"]}
    golden("keyword_features_msearch", [{"for": list(t), "body": b} for t, b in tagged])
    # Document frequencies are cached: the same query a moment later sends only the candidate queries.
    for (what, f, w), _ in tagged:
        if what == "count":
            queries._df.set(f"{f}\x1f{w}", 1, ttl_s=100.0, now=0.0)
    again, _ = queries.plan("The solar panels, and solar storage", ["d1"], now=1.0)
    assert [t[0] for t, _ in again] == ["score", "match", "score", "match"]


def test_matched_queries_as_list_or_named_scores():
    assert F._matched({"matched_queries": ["t0", "phrase"]}) == {"t0", "phrase"}
    assert F._matched({"matched_queries": {"t1": 1.2, "phrase": 3.0}}) == {"t1", "phrase"}  # OpenSearch 2.13+
    assert F._matched({"_id": "x"}) == set()


def test_keyword_features_come_from_the_cluster(loaded, tiny_index):
    cfg, settings = loaded
    cascade = open_cascade(cfg, settings)
    feats, traces = features_of(cascade, "solar electricity")
    kw_trace = next(t for t in traces if t.name == "keyword_features")
    assert kw_trace.error is None and kw_trace.ms > 0 and [t.name for t in traces][-1] == "features"
    assert set(KW) <= set(next(iter(feats.values())))
    # d1's text has "electricity" only; d5's has both words and the phrase "solar and wind electricity" not.
    assert feats["d1"]["kw.text.coverage"] == 0.5 and feats["d5"]["kw.text.coverage"] == 1.0
    assert feats["d1"]["kw.text.bm25"] > 0 and feats["d5"]["kw.text.bm25"] > feats["d1"]["kw.text.bm25"]
    assert feats["d1"]["kw.title.coverage"] == 0.5  # "Solar panels on rooftops"
    for d, f in feats.items():  # no match: the value a non-matching document has
        if f["kw.text.coverage"] == 0:
            assert f["kw.text.bm25"] == 0 and f["kw.text.idf_coverage"] == 0 and f["kw.text.phrase"] == 0
    phrased, _ = features_of(cascade, "deep ocean")
    assert phrased["d6"]["kw.text.phrase"] == 1.0 and phrased["d6"]["kw.title.phrase"] == 0.0

    # Same names and meaning as on the embedded backend: coverage, phrase and length agree exactly.
    emb_cfg, emb_settings = tiny_index
    embedded = open_cascade(emb_cfg.model_copy(update={"features": cfg.features}), emb_settings)
    e_feats, _ = features_of(embedded, "solar electricity")
    for d in set(feats) & set(e_feats):
        for n in ("kw.text.coverage", "kw.title.coverage", "kw.text.phrase", "kw.text.log_length"):
            assert feats[d][n] == pytest.approx(e_feats[d][n]), (d, n)
        assert feats[d]["kw.text.idf_coverage"] == pytest.approx(e_feats[d]["kw.text.idf_coverage"], abs=0.05)
    assert cascade.features.keyword_source == "opensearch" and embedded.features.keyword_source == "embedded"


def test_document_counts_are_used_even_when_nothing_is_cached(loaded):
    """Regression (review): with stats_ttl_s: 0 the counts were only read back from the cache, so idf_coverage
    was always 0 and every query was flagged."""
    cfg, settings = loaded
    data = cfg.model_dump(mode="json")
    data["backend"]["stats_ttl_s"] = 0
    cascade = open_cascade(parse_config(data, "tiny.yaml"), settings)
    feats, traces = features_of(cascade, "solar electricity")
    assert next(t for t in traces if t.name == "keyword_features").error is None
    assert feats["d5"]["kw.text.idf_coverage"] == pytest.approx(1.0)
    assert 0 < feats["d1"]["kw.text.idf_coverage"] < 1


def test_only_candidates_are_scored(loaded):
    cfg, settings = loaded
    cascade = open_cascade(cfg, settings)
    q = cascade.validate(Query(text="solar", size=10))
    cands, _ = asyncio.run(cascade.candidates(q, features=False))
    some = cands.take(np.arange(2))
    answers = asyncio.run(cascade.features.source.queries.run(q, some))
    assert set(answers.scores["text"]) <= set(some.ids) and set(answers.matched["text"]) <= set(some.ids)


def test_a_rejected_sub_query_degrades_only_its_field(loaded, monkeypatch):
    cfg, settings = loaded
    cascade = open_cascade(cfg, settings)
    real = F.scoring_body

    def broken(target, text, ids):  # the cluster refuses this one (a text query on a long field)
        return real("year", text, ids) if target == "title" else real(target, text, ids)

    monkeypatch.setattr(F, "scoring_body", broken)
    feats, traces = features_of(cascade, "solar electricity")
    kw = next(t for t in traces if t.name == "keyword_features")
    assert kw.error and "title" in kw.error
    assert next(t for t in traces if t.name == "features").error is None  # the features step still serves
    assert all(f["kw.title.bm25"] == 0 for f in feats.values())
    assert any(f["kw.text.bm25"] > 0 for f in feats.values())


def test_a_failed_round_trip_leaves_the_features_missing_not_the_search(loaded, monkeypatch):
    cfg, settings = loaded
    cascade = open_cascade(cfg, settings)
    cluster = cascade.features.source.queries.backend.cluster
    real = cluster.call

    async def flaky(what, fn):
        if "keyword-feature" in what:
            raise TimeoutError("the cluster did not answer")
        return await real(what, fn)

    monkeypatch.setattr(cluster, "call", flaky)
    feats, traces = features_of(cascade, "solar electricity")
    kw = next(t for t in traces if t.name == "keyword_features")
    assert "TimeoutError" in kw.error
    assert all(f[n] == 0 for f in feats.values() for n in KW if not n.endswith("log_length"))


def test_features_logged_on_a_cluster_train_a_model_the_embedded_backend_refuses(loaded, tiny_index, tmp_path,
                                                                                monkeypatch):
    from features.logging import log_features
    from features.training.ltr import train_ltr

    cfg, settings = loaded
    cascade = open_cascade(cfg, settings, stages=False)
    queries = {"q1": "solar electricity", "q2": "deep ocean fish", "q3": "gene expression cells",
               "q4": "protein folding", "q5": "wind turbines", "q6": "battery storage"}
    qrels = {"q1": {"d1": 1, "d5": 2}, "q2": {"d6": 2}, "q3": {"d4": 2}, "q4": {"d3": 2}, "q5": {"d2": 2},
             "q6": {"d5": 2}}
    log = tmp_path / "os.parquet"
    asyncio.run(log_features(cascade, queries, qrels, log, source="osmem tiny"))
    model = tmp_path / "ltr-os"
    train_ltr([log], model, valid_fraction=0.0, rounds=5, params={"min_data_in_leaf": 1, "min_data_in_bin": 1})
    meta = json.loads((model / "model.json").read_text())
    assert meta["features"]["keyword_source"] == "opensearch"

    stage = [{"type": "ltr", "model": str(model), "rerank": 10}]
    served = open_cascade(os_config(cfg.backend.hosts[0], stages=stage), settings)
    res = asyncio.run(served.search(served.validate(Query(text="deep ocean fish"))))
    assert not res.degraded and [t.name for t in res.traces][-1] == "ltr"
    assert [t.name for t in res.traces] == ["bm25", "fusion", "keyword_features", "features", "ltr"]

    # A feature query the cluster rejects flags the answer; the LTR stage still ranks, with missing values.
    real = F.scoring_body
    monkeypatch.setattr(F, "scoring_body", lambda target, text, ids: real("year" if target == "title" else target,
                                                                          text, ids))
    res = asyncio.run(served.search(served.validate(Query(text="deep ocean fish"))))
    assert res.degraded == ["keyword_features"] and res.traces[-1].error is None and len(res.candidates)
    monkeypatch.undo()

    _, emb_settings = tiny_index  # the same corpus, feature set and stage on the embedded backend
    with pytest.raises(ConfigError) as e:
        open_cascade(tiny_config(retrievers={"bm25": {"type": "bm25", "k": 10}}, features=FEATURES, stages=stage),
                     emb_settings)
    assert e.value.key == "stages.0.model" and "opensearch backend" in e.value.reason
    assert "cascade features log" in e.value.reason
    assert meta["features"]["keyword_analyzers"] == {"text": "english", "title": "english"}
    other = os_config(cfg.backend.hosts[0], stages=stage,
                      fields={**json.loads(json.dumps(TINY_CONFIG))["fields"], "text": {"type": "text",
                                                                                         "analyzer": "standard"}})
    with pytest.raises(ConfigError, match="other analyzers .text: english then, standard now"):
        open_cascade(other, settings)
