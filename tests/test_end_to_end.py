"""End to end on real collections from CASCADE_DATA_DIR: index, search, evaluate every step."""

import numpy as np
import pytest

from cascade.config import parse_config
from cascade.controller import Cascade
from cascade.datasets import corpus_file, iter_corpus, load_qrels, load_queries
from cascade.evaluation import evaluate
from cascade.query import Query
from connectors.embedded import build_index

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def med(tmp_path_factory):
    import os

    from cascade.settings import Settings

    data = os.environ.get("CASCADE_DATA_DIR")
    if not data or not os.path.isdir(os.path.join(data, "med")):
        pytest.skip("CASCADE_DATA_DIR with med/ is not available")
    from pathlib import Path

    folder = Path(data) / "med"
    models = os.environ.get("CASCADE_MODELS_DIR")
    settings = Settings(index_dir=tmp_path_factory.mktemp("idx"), data_dir=Path(data),
                        models_dir=Path(models) if models else None, config_dir=tmp_path_factory.mktemp("cfg"))
    cfg = parse_config({
        "index": "med",
        "embedder": {"model": "default", "max_length": 128},
        "retrievers": {"bm25": {"k": 100}, "knn": {"k": 100}},
        "fusion": {"method": "rrf", "k": 60, "keep": 100},
    }, "med.yaml")
    rep = build_index(cfg, iter_corpus(corpus_file(folder)), settings, source="med")
    assert rep.docs == 1033
    return cfg, settings, folder


async def test_hybrid_fusion_beats_the_weaker_retriever_on_med(med):
    cfg, settings, folder = med
    cascade = Cascade.from_config(cfg, settings)
    rep = await evaluate(cascade, load_queries(folder), load_qrels(folder, "test"), dataset="med", split="test")
    by = {s.name: s for s in rep.stages}
    assert rep.queries == 30 and set(by) == {"bm25", "knn", "fusion"}
    weaker = min(by["bm25"].ndcg_10, by["knn"].ndcg_10)
    assert by["fusion"].ndcg_10 > weaker, {n: s.ndcg_10 for n, s in by.items()}
    assert by["fusion"].recall_100 >= max(by["bm25"].recall_100, by["knn"].recall_100) - 0.02
    # Sanity bounds, not targets: MED is an easy collection for both retrievers.
    assert 0.3 < by["bm25"].ndcg_10 < 0.95 and 0.3 < by["knn"].ndcg_10 < 0.95
    assert all(s.p50_ms > 0 and s.p95_ms >= s.p50_ms for s in rep.stages)
    assert rep.as_json()["stages"][2]["name"] == "fusion"


async def test_cross_encoder_stage_on_real_index(med, models_dir):
    cfg, settings, _ = med
    ce_cfg = parse_config({**cfg.model_dump(mode="json"), "stages": [
        {"type": "cross_encoder", "model": "minilm-l6-ce-v1", "rerank": 8, "keep": 20, "max_length": 128}]}, "med.yaml")
    cascade = Cascade.from_config(ce_cfg, settings)
    res = await cascade.search(Query("the crystalline lens in vertebrates, including humans", size=10))
    ce = res.traces[-1]
    assert ce.name == "cross_encoder" and ce.kind == "cross_encoder"
    assert ce.n_in == 100 and ce.n_out == 20 and ce.scored == 8 and not ce.error
    scores = res.candidates.stage_scores["cross_encoder"]
    assert np.isfinite(scores[:8]).all() and np.isnan(scores[8:]).all()
    assert list(scores[:8]) == sorted(scores[:8], reverse=True)
    assert set(res.candidates.ids[:8]) == set(res.traces[2].ids[:8])  # it re-ordered fusion's top 8


def test_cross_encoder_prefers_relevant_abstracts_on_scifact_test(data_dir, models_dir, settings):
    """SciFact test is clean for this model: a judged abstract should outscore a random one."""
    from connectors.rerankers import load_cross_encoder

    folder = data_dir / "scifact"
    queries, qrels = load_queries(folder), load_qrels(folder, "test")
    docs = {r["_id"]: r for _, r in iter_corpus(corpus_file(folder))}
    ids = sorted(docs)
    rng = np.random.default_rng(0)
    scorer = load_cross_encoder(["minilm-l6-ce-v1"], settings, max_length=256, batch_size=16)
    wins = 0
    qids = list(qrels)[:12]
    for q in qids:
        rel = next(iter(qrels[q]))
        rand = ids[int(rng.integers(len(ids)))]
        texts = [f"{docs[d]['title']} {docs[d]['text']}" for d in (rel, rand)]
        s = scorer.score(queries[q], texts)
        wins += s[0] > s[1]
    assert wins >= 10, f"relevant beat random in {wins}/{len(qids)} queries"


def test_unreachable_hub_model_fails_with_every_tried_name(settings):
    from cascade.errors import ModelNotFound
    from connectors.rerankers import load_cross_encoder

    with pytest.raises(ModelNotFound) as e:
        load_cross_encoder(["no-such-model", "someone/not-cached-anywhere"], settings, max_length=64, batch_size=4)
    msg = str(e.value)
    assert "no-such-model" in msg and "someone/not-cached-anywhere" in msg and "offline" in msg
