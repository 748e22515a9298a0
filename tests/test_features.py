"""Each feature against a hand computation on the tiny index, and the LTR model schema check."""

import math
from collections import Counter

import numpy as np
import pytest

from cascade.controller import Cascade
from cascade.builder import open_cascade
from cascade.errors import ConfigError
from cascade.query import Query
from connectors.analysis import analyze
from connectors.embedded import EmbeddedBackend, build_index
from features.config import RecencyFeatures
from features.groups import decay
from tests.conftest import TINY_DOCS, tiny_config

FEATURES = {
    "version": "1",
    "keyword": {"k1": 1.2, "b": 0.75},
    "retrieval": True,
    "semantic": True,
    "recency": {"field": "published", "decay": "exp", "scale_days": 365, "decay_value": 0.5, "now": "2023-01-01"},
    "numeric": [{"field": "cites", "log": True}, {"field": "year"}],
    "query": True,
}


@pytest.fixture
def feat_index(settings):
    cfg = tiny_config(features=FEATURES)
    build_index(cfg, ((i + 1, dict(d)) for i, d in enumerate(TINY_DOCS)), settings, source="tiny")
    return cfg, settings


async def features_for(cfg, settings, text, **kw):
    c = open_cascade(cfg, settings)
    cands, traces = await c.candidates(c.validate(Query(text, **kw)), features=True)  # no stage reads them here
    assert traces[-1].name == "features" and not traces[-1].error
    return c, cands, {n: cands.features[:, j] for j, n in enumerate(cands.feature_names)}


def textbook_bm25(query: str, field: str, doc_id: str, k1=1.2, b=0.75) -> float:
    docs = [analyze("english", d.get(field, "")) for d in TINY_DOCS]
    n = len(docs)
    avgdl = sum(map(len, docs)) / n
    doc = docs[[d["_id"] for d in TINY_DOCS].index(doc_id)]
    tf = Counter(doc)
    total = 0.0
    for term, qtf in Counter(analyze("english", query)).items():
        df = sum(term in d for d in docs)
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        total += qtf * idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * len(doc) / avgdl))
    return total


async def test_names_are_a_function_of_the_config(feat_index):
    cfg, settings = feat_index
    c, cands, f = await features_for(cfg, settings, "solar electricity")
    assert cands.feature_names == c.features.names
    assert cands.feature_names[:5] == ["kw.title.bm25", "kw.title.coverage", "kw.title.idf_coverage",
                                       "kw.title.phrase", "kw.title.log_length"]
    assert "ret.bm25.rr" in f and "ret.knn.missing" in f and "ret.fusion" in f
    assert cands.feature_names[-2:] == ["q.length", "q.candidates"]
    assert cands.features.dtype == np.float32 and np.isfinite(cands.features).all()


async def test_bm25_feature_matches_the_textbook_formula(feat_index):
    cfg, settings = feat_index
    q = "solar electricity from the wind"
    _, cands, f = await features_for(cfg, settings, q)
    for i, d in enumerate(cands.ids):
        for field in ("title", "text"):
            assert f[f"kw.{field}.bm25"][i] == pytest.approx(textbook_bm25(q, field, d), rel=1e-5), (d, field)


async def test_bm25_feature_agrees_with_tantivy_on_a_single_field(feat_index):
    """tantivy's BM25 (same k1, b, idf) on the text field alone gives the same numbers for short documents."""
    cfg, settings = feat_index
    q = "solar electricity wind"
    _, cands, f = await features_for(cfg, settings, q)
    b = EmbeddedBackend(cfg, settings)
    text_only = b.retriever("bm25", cfg.retrievers["bm25"].model_copy(update={"fields": {"text": 1.0}}))
    engine = {h.id: h.score for h in text_only.search(Query(q), 10)}
    mine = dict(zip(cands.ids, f["kw.text.bm25"]))
    assert engine and all(mine[d] == pytest.approx(s, rel=2e-3) for d, s in engine.items())


async def test_coverage_phrase_and_length(feat_index):
    cfg, settings = feat_index
    _, cands, f = await features_for(cfg, settings, "solar panels")
    i = cands.ids.index("d1")  # title "Solar panels on rooftops"
    assert f["kw.title.coverage"][i] == 1.0 and f["kw.title.phrase"][i] == 1.0
    assert f["kw.title.log_length"][i] == pytest.approx(math.log1p(len(analyze("english", TINY_DOCS[0]["title"]))))
    j = cands.ids.index("d2")  # text mentions "Solar" but not "panels"
    assert f["kw.text.coverage"][j] == 0.5 and f["kw.text.phrase"][j] == 0.0
    docs = [analyze("english", d["text"]) for d in TINY_DOCS]
    idf = {t: math.log(1 + (6 - sum(t in d for d in docs) + 0.5) / (sum(t in d for d in docs) + 0.5)) for t in ("solar", "panel")}
    assert f["kw.text.idf_coverage"][j] == pytest.approx(idf["solar"] / (idf["solar"] + idf["panel"]))


async def test_retrieval_features(feat_index):
    cfg, settings = feat_index
    _, cands, f = await features_for(cfg, settings, "protein folding amino acids")
    for i in range(len(cands)):
        r = cands.retriever_ranks["bm25"][i]
        if r:
            assert f["ret.bm25.rr"][i] == pytest.approx(1 / r) and f["ret.bm25.missing"][i] == 0
            assert f["ret.bm25.score"][i] == pytest.approx(cands.retriever_scores["bm25"][i])
        else:  # not found: defined values, the retriever's lowest score for this query
            assert f["ret.bm25.rr"][i] == 0 and f["ret.bm25.missing"][i] == 1
            assert f["ret.bm25.score"][i] == pytest.approx(np.nanmin(cands.retriever_scores["bm25"]))
    assert np.allclose(f["ret.fusion"], cands.stage_scores["fusion"])


async def test_semantic_cosine_reuses_stored_vectors(feat_index):
    cfg, settings = feat_index
    c, cands, f = await features_for(cfg, settings, "glowing animals in the ocean")
    b = c.documents
    q = b.embedder.encode_query("glowing animals in the ocean")
    expected = b.vectors[[b.row_of[d] for d in cands.ids]] @ q
    assert np.allclose(f["sem.cosine"], expected, atol=1e-5)
    knn = cands.retriever_scores["knn"]
    found = ~np.isnan(knn)
    assert np.allclose(f["sem.cosine"][found], knn[found], atol=1e-4)  # the same number kNN computed


def test_decay_functions_hit_decay_value_at_scale():
    for kind in ("gauss", "exp", "linear"):
        cfg = RecencyFeatures(field="d", decay=kind, scale_days=100, offset_days=10, decay_value=0.25)
        v = decay(np.array([0.0, 10.0, 110.0, -110.0]), cfg)
        assert v[0] == 1.0 and v[1] == 1.0
        assert v[2] == pytest.approx(0.25) and v[3] == pytest.approx(0.25)
    lin = RecencyFeatures(field="d", decay="linear", scale_days=100, decay_value=0.5)
    assert decay(np.array([300.0]), lin)[0] == 0.0  # linear reaches 0 at scale / (1 - decay) = 200


async def test_recency_numeric_and_query_features(feat_index):
    cfg, settings = feat_index
    _, cands, f = await features_for(cfg, settings, "solar wind battery electricity")
    now = 1672531200.0  # 2023-01-01
    for i, d in enumerate(cands.ids):
        doc = TINY_DOCS[[x["_id"] for x in TINY_DOCS].index(d)]
        meta = doc["metadata"]
        from cascade.query import to_epoch_seconds

        age = (now - to_epoch_seconds(meta["published"], "p")) / 86400
        assert f["rec.age_days"][i] == pytest.approx(age, rel=1e-5)
        assert f["rec.decay"][i] == pytest.approx(0.5 ** (age / 365), rel=1e-4) and f["rec.missing"][i] == 0
        if "cites" in meta:
            assert f["num.cites"][i] == pytest.approx(math.log1p(meta["cites"])) and f["num.cites.missing"][i] == 0
        else:  # d5 has no cites: the configured missing value and a flag, never NaN
            assert f["num.cites"][i] == 0.0 and f["num.cites.missing"][i] == 1
        assert f["num.year"][i] == meta["year"]
    assert (f["q.length"] == 4).all() and (f["q.candidates"] == len(cands)).all()


async def test_missing_date_gets_defined_value(settings):
    docs = [dict(d) for d in TINY_DOCS]
    docs[0] = {**docs[0], "metadata": {k: v for k, v in docs[0]["metadata"].items() if k != "published"}}
    feats = {**FEATURES, "recency": {**FEATURES["recency"], "missing": 0.3}}
    cfg = tiny_config(features=feats)
    build_index(cfg, ((i + 1, d) for i, d in enumerate(docs)), settings, source="tiny")
    _, cands, f = await features_for(cfg, settings, "solar panels")
    i = cands.ids.index("d1")
    assert f["rec.missing"][i] == 1 and f["rec.decay"][i] == pytest.approx(0.3) and f["rec.age_days"][i] == 0


@pytest.mark.parametrize("bad, key", [
    ({**FEATURES, "recency": {"field": "year"}}, "features.recency.field"),
    ({**FEATURES, "recency": {"field": "nope"}}, "features.recency.field"),
    ({**FEATURES, "numeric": [{"field": "journal"}]}, "features.numeric.0.field"),
    ({**FEATURES, "keyword": {"fields": ["journal"]}}, "features.keyword.fields"),
])
def test_feature_config_naming_missing_fields_fails(bad, key):
    with pytest.raises(ConfigError) as e:
        tiny_config(features=bad)
    assert e.value.key == key


def test_ltr_stage_needs_features():
    with pytest.raises(ConfigError) as e:
        tiny_config(stages=[{"type": "ltr", "model": "m"}])
    assert e.value.key == "stages.0" and "features" in e.value.reason


async def test_features_are_computed_only_when_an_enabled_stage_reads_them(feat_index):
    """Regression: the feature matrix was computed for every query, even with no stage that reads it."""
    from tests.service_fixtures import LengthStage

    cfg, settings = feat_index
    c = open_cascade(cfg, settings)
    assert not c.computes_features
    res = await c.search(Query("solar electricity"))
    assert "features" not in [t.name for t in res.traces] and res.candidates.features is None
    c.stages.append(LengthStage())  # reads text, not features: still none
    assert not c.computes_features
    reader = LengthStage("reader")
    reader.reads_features = True
    c.stages.append(reader)
    res = await c.search(Query("solar electricity"))
    assert "features" in [t.name for t in res.traces] and res.candidates.features is not None
