"""End to end on real collections from CASCADE_DATA_DIR: index, search, evaluate every step."""

import numpy as np
import pytest

from cascade.config import parse_config
from cascade.controller import Cascade
from cascade.builder import open_cascade
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
    cascade = open_cascade(cfg, settings)
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


SUBSET_CLAIMS, NEIGHBOURS, FILLER = 30, 8, 50


@pytest.fixture(scope="module")
def scifact_subset(tmp_path_factory):
    """A small real index for SciFact test claims, the one set the shipped cross-encoder never saw in training.

    Embedding all 5,183 abstracts takes minutes here, so the index holds what the
    first 30 test claims need: their judged abstracts, each claim's 8 nearest
    other abstracts by BM25 over the whole corpus (the hard candidates a full
    index would retrieve beside them) and 50 random ones, about 300 abstracts,
    all read from CASCADE_DATA_DIR.
    """
    import os
    from pathlib import Path

    import tantivy

    from cascade.settings import Settings

    data, models = os.environ.get("CASCADE_DATA_DIR"), os.environ.get("CASCADE_MODELS_DIR")
    if not data or not os.path.isdir(os.path.join(data, "scifact")):
        pytest.skip("CASCADE_DATA_DIR with scifact/ is not available")
    if not models or not os.path.isdir(os.path.join(models, "minilm-l6-ce-v1")):
        pytest.skip("CASCADE_MODELS_DIR with minilm-l6-ce-v1 is not available")
    folder = Path(data) / "scifact"
    queries, all_qrels = load_queries(folder), load_qrels(folder, "test")
    qrels = {q: all_qrels[q] for q in list(all_qrels)[:SUBSET_CLAIMS]}
    judged = {d for rels in qrels.values() for d in rels}
    docs = [r for _, r in iter_corpus(corpus_file(folder))]

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw")
    sb.add_text_field("body", tokenizer_name="en_stem")
    bm25 = tantivy.Index(sb.build())  # in memory, whole corpus: picks the hard candidates only
    w = bm25.writer()
    for r in docs:
        w.add_document(tantivy.Document(id=r["_id"], body=f"{r.get('title', '')} {r.get('text', '')}"))
    w.commit()
    bm25.reload()
    searcher = bm25.searcher()
    near: set[str] = set()
    for q in qrels:
        parsed, _ = bm25.parse_query_lenient(queries[q], ["body"])
        ids = [searcher.doc(a)["id"][0] for _, a in searcher.search(parsed, NEIGHBOURS + 10).hits]
        near.update([d for d in ids if d not in judged][:NEIGHBOURS])
    rest = sorted(r["_id"] for r in docs if r["_id"] not in judged and r["_id"] not in near)
    filler = set(np.random.default_rng(0).choice(rest, FILLER, replace=False).tolist())
    keep = judged | near | filler
    subset = [r for r in docs if r["_id"] in keep]

    settings = Settings(index_dir=tmp_path_factory.mktemp("idx"), data_dir=Path(data), models_dir=Path(models),
                        config_dir=tmp_path_factory.mktemp("cfg"))
    cfg = parse_config({
        "index": "scifact-subset",
        "embedder": {"model": "default", "max_length": 128},
        "retrievers": {"bm25": {"k": 100}, "knn": {"k": 100}},
        "fusion": {"method": "rrf", "k": 60, "keep": 100},
    }, "scifact-subset.yaml")
    rep = build_index(cfg, ((i + 1, r) for i, r in enumerate(subset)), settings, source="scifact-subset")
    assert rep.docs == len(keep) and judged <= keep
    return cfg, settings, {q: queries[q] for q in qrels}, qrels


async def test_cross_encoder_stage_on_real_index(scifact_subset):
    """The cross-encoder stage, combined with fusion as in configs/scifact.yaml, on SciFact test claims.

    Quality check: inside the stage's window (fusion's top 20, mostly BM25 and
    kNN neighbours of the claim, so hard candidates), the model's own scores
    put the judged abstracts above the other candidates: per claim, the share of
    (judged, other) pairs it orders right (AUC; chance is 0.5). Here: mean 0.90,
    above chance for 27 of the 29 claims with a judged abstract in the window;
    0.86 and 37 of 40 on the next 40 claims. Whether the combination raises
    nDCG@10 over fusion is not asserted: it depends on the claims (+0.007 and
    -0.061 on those two slices of 40; this model alone does not beat fusion on
    SciFact, see its TRAINING.md), so no honest threshold separates it from noise.
    """
    cfg, settings, queries, qrels = scifact_subset
    rerank = 20
    ce_cfg = parse_config({**cfg.model_dump(mode="json"), "stages": [
        {"type": "cross_encoder", "model": "minilm-l6-ce-v1", "rerank": rerank, "keep": 50, "max_length": 128,
         "combine": {"normalize": "zscore", "weights": {"cross_encoder": 1.0, "fusion": 1.0}}}]}, "scifact-subset.yaml")
    cascade = open_cascade(ce_cfg, settings)
    aucs = []
    for qid, text in queries.items():
        res = await cascade.search(Query(text, size=10))
        ce, fusion = res.traces[-1], res.traces[2]
        assert ce.name == "cross_encoder" and ce.kind == "cross_encoder" and not ce.error
        assert ce.n_in == len(fusion.ids) and ce.scored == rerank and ce.n_out == min(50, ce.n_in)
        window = res.candidates.head(rerank)
        assert set(window.ids) == set(fusion.ids[:rerank])  # it re-ordered fusion's top 20, nothing else
        own = window.stage_scores["cross_encoder"]
        assert np.isfinite(own).all() and np.isnan(res.candidates.stage_scores["cross_encoder"][rerank:]).all()
        # The order follows the combination, best first; the model's raw score stays in stage_scores.
        def z(x):
            return (x - x.mean()) / x.std()

        assert np.allclose(window.score, z(own) + z(window.stage_scores["fusion"]))
        assert list(window.score) == sorted(window.score, reverse=True)
        rel = [i for i, d in enumerate(window.ids) if qrels[qid].get(d, 0) > 0]
        other = [i for i in range(len(window)) if i not in rel]
        if rel and other:
            aucs.append(np.mean([own[r] > own[o] for r in rel for o in other]))
    assert len(aucs) >= 0.8 * len(queries), f"a judged abstract in the window for only {len(aucs)} claims"
    above = sum(a > 0.5 for a in aucs)
    assert np.mean(aucs) >= 0.75 and above >= 0.75 * len(aucs), (
        f"mean AUC {np.mean(aucs):.3f}, above chance for {above}/{len(aucs)} claims")


def test_cross_encoder_prefers_relevant_abstracts_on_scifact_test(data_dir, models_dir, settings):
    """SciFact test is clean for this model: a judged abstract should outscore a random one."""
    from cascade.models.torch_ce import load_cross_encoder

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
    from cascade.models.torch_ce import load_cross_encoder

    with pytest.raises(ModelNotFound) as e:
        load_cross_encoder(["no-such-model", "someone/not-cached-anywhere"], settings, max_length=64, batch_size=4)
    msg = str(e.value)
    assert "no-such-model" in msg and "someone/not-cached-anywhere" in msg and "offline" in msg
