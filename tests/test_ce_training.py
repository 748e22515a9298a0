"""Cross-encoder fine-tuning on a real collection (MED): mining, the recipe, training, and serving the result."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cascade.config import dump_config, parse_config
from cascade.datasets import corpus_file, iter_corpus, load_qrels, load_queries
from cascade.errors import CascadeError, ConfigError
from cascade.settings import Settings, get_settings
from connectors.embedded import build_index
from cascade.models.lookup import resolve_model
from cascade.models.torch_ce import load_cross_encoder
from tests.conftest import TINY_DOCS, write_corpus
from features.training.cross_encoder import (
    Recipe,
    groups_digest,
    load_recipe,
    mine_groups,
    recipe_from_dict,
    train_cross_encoder,
)

pytestmark = pytest.mark.slow

MED = {
    "index": "med",
    "embedder": {"model": "default", "max_length": 64},
    "retrievers": {"bm25": {"k": 50}, "knn": {"k": 50}},
    "fusion": {"method": "rrf", "k": 60, "keep": 100},
}


@pytest.fixture(scope="module")
def med(tmp_path_factory):
    import os

    data = os.environ.get("CASCADE_DATA_DIR")
    if not data or not Path(data, "med").is_dir():
        pytest.skip("CASCADE_DATA_DIR with med/ is not available")
    root = tmp_path_factory.mktemp("med")
    settings = Settings(index_dir=root / "idx", trained_dir=root / "models", config_dir=root / "cfg",
                        data_dir=Path(data), models_dir=None)
    cfg = parse_config(MED, "med.yaml")
    settings.config_dir.mkdir(parents=True)
    (settings.config_dir / "med.yaml").write_text(dump_config(cfg))
    folder = Path(data) / "med"
    build_index(cfg, iter_corpus(corpus_file(folder)), settings, source="med")
    corpus = {rec["_id"]: rec for _, rec in iter_corpus(corpus_file(folder))}
    return settings, corpus, load_queries(folder), load_qrels(folder, "test")


def recipe(**kw) -> Recipe:
    return recipe_from_dict({"data": [{"dataset": "med", "split": "test", "cap": 40}], **kw})


def test_groups_are_one_relevant_then_bm25_hard_negatives_then_random(med):
    settings, corpus, queries, qrels = med
    groups, stats = mine_groups(recipe().data[0], recipe(), settings)
    assert len(groups) == 40 and stats.groups == 40 and stats.candidates == sum(
        1 for q in qrels.values() for g in q.values() if g >= 1)
    from cascade.builder import open_cascade
    from cascade.config import load_config
    from cascade.query import Query

    casc = open_cascade(load_config("med", settings.config_dir), settings)
    by_text = {v: k for k, v in queries.items()}
    for g in groups:
        assert len(g.docs) == len(g.ids) == 4 and len(set(g.ids)) == 4
        qid = by_text[g.query]
        relevant = {d for d, grade in qrels[qid].items() if grade > 0}
        assert g.ids[0] in relevant and g.docs[0] == f"{corpus[g.ids[0]]['title']} {corpus[g.ids[0]]['text']}".strip()
        top30 = [h.id for h in casc.retrievers["bm25"].search(Query(text=g.query), 30)]
        assert set(g.ids[1:3]) <= set(top30) - relevant  # hard: the index's own BM25 near misses
        assert g.ids[3] not in relevant and g.ids[3] not in g.ids[1:3]


def test_mining_is_seeded(med):
    settings, *_ = med
    a, _ = mine_groups(recipe().data[0], recipe(), settings)
    b, _ = mine_groups(recipe().data[0], recipe(), settings)
    c, _ = mine_groups(recipe(seed=14).data[0], recipe(seed=14), settings)
    assert groups_digest(a) == groups_digest(b) != groups_digest(c)


def test_title_pairs_use_the_title_as_query_and_hide_it_from_every_document(tiny_index, tmp_path):
    cfg, settings = tiny_index
    (settings.config_dir).mkdir(parents=True, exist_ok=True)
    (settings.config_dir / "tiny.yaml").write_text(dump_config(cfg))
    data = tmp_path / "data"
    (data / "tiny").mkdir(parents=True)
    write_corpus(data / "tiny" / "corpus.jsonl")
    settings = settings.model_copy(update={"data_dir": data})
    rec = recipe_from_dict({"data": [{"dataset": "tiny", "titles": 3, "min_title_words": 3}], "mine_depth": 5})
    groups, stats = mine_groups(rec.data[0], rec, settings)
    docs = {d["_id"]: d for d in TINY_DOCS}
    assert stats.candidates == sum(len(d["title"].split()) >= 3 for d in TINY_DOCS) and len(groups) == 3
    for g in groups:
        assert g.query == docs[g.ids[0]]["title"] and len(g.query.split()) >= 3
        assert g.docs == [docs[d]["text"] for d in g.ids]  # text only: the title would give the answer away


def test_a_source_without_usable_positives_is_an_error(med):
    settings, *_ = med
    rec = recipe_from_dict({"data": [{"dataset": "med", "titles": 10}]})  # MED documents have no titles
    with pytest.raises(CascadeError, match="med:titles: no usable positives"):
        mine_groups(rec.data[0], rec, settings)


def test_fine_tuning_learns_to_put_the_relevant_document_first_and_serves(med):
    settings, *_ = med
    rec = recipe(learning_rate=1e-4, epochs=4, max_length=64, groups_per_step=4, warmup=0.1, precision="float32")
    groups, stats = mine_groups(rec.data[0], rec, settings)
    groups = groups[:16]

    def top1(model: str) -> float:
        scorer = load_cross_encoder([model], settings, max_length=64, batch_size=16, dtype="float32")
        return float(np.mean([int(np.argmax(scorer.score(g.query, g.docs)) == 0) for g in groups]))

    base, _ = resolve_model("default", settings)
    before = top1(base)
    res = train_cross_encoder(rec, groups, settings.trained_dir / "med-ce", settings, stats=[stats])
    assert res.steps == 16 and res.last_loss < res.first_loss
    after = top1("med-ce")  # found by name under CASCADE_TRAINED_DIR, loaded by the serving path
    assert after >= 0.75 and after > before + 0.25, (before, after)

    out = settings.trained_dir / "med-ce"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin")) and not list(out.glob("*.pkl"))
    meta = json.loads((out / "cascade-training.json").read_text())
    assert meta["format"] == "cascade-cross-encoder/1" and meta["steps"] == 16 and meta["groups"] == 16
    assert meta["recipe"]["learning_rate"] == 1e-4 and meta["data"][0]["source"] == "med:test"
    assert len(meta["groups_sha256"]) == 64 and meta["precision"] == "float32"


def test_recipe_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("data:\n  - {dataset: med, cap: 0}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: data\.0\.cap"):
        load_recipe(bad)
    bad.write_text("data: [{dataset: med}]\nlearning_rat: 1e-5\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        load_recipe(bad)
    bad.write_text("data: [{dataset: med}]\nhard_negatives: 0\nrandom_negatives: 0\n")
    with pytest.raises(ConfigError, match="at least one negative"):
        load_recipe(bad)
    bad.write_text("data: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


def test_shipped_recipe_matches_the_shipped_models_training_notes():
    rec = load_recipe(Path(__file__).resolve().parent.parent / "features" / "training" / "recipes" / "minilm-l6-ce-v1.yaml")
    assert rec.group_size == 4 and rec.learning_rate == 7e-5 and rec.max_length == 192 and rec.seed == 13
    caps = {d.label: d.cap or d.titles for d in rec.data}
    assert sum(caps.values()) == 4913  # TRAINING.md: 4,913 groups


def test_mining_refuses_an_unknown_miner(med):
    settings, *_ = med
    rec = recipe(miner="splade")
    with pytest.raises(CascadeError, match="splade.*bm25, knn"):
        mine_groups(rec.data[0], rec, settings)


def test_cli_argument_errors(monkeypatch, tmp_path):
    from cascade.cli import app

    monkeypatch.setenv("CASCADE_TRAINED_DIR", str(tmp_path))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        r = runner.invoke(app, ["train", "cross-encoder", "--recipe", "minilm-l6-ce-v1", "--dataset", "med"])
        assert r.exit_code != 0 and "either --recipe" in r.output
        r = runner.invoke(app, ["train", "cross-encoder", "--recipe", "nope"])
        assert r.exit_code != 0 and "minilm-l6-ce-v1" in r.output  # lists the built-in recipes
        r = runner.invoke(app, ["train", "cross-encoder", "--dataset", "scifact", "--split", "train",
                                "--eval", "scifact:train"])
        assert r.exit_code != 0 and "trains on it" in r.output
    finally:
        get_settings.cache_clear()


def test_eval_command_compares_models_on_the_same_candidates_and_reports(med, models_dir, monkeypatch, tmp_path):
    from cascade.cli import app

    settings, *_ = med
    for var, val in (("CASCADE_INDEX_DIR", settings.index_dir), ("CASCADE_CONFIG_DIR", settings.config_dir),
                     ("CASCADE_DATA_DIR", settings.data_dir), ("CASCADE_MODELS_DIR", models_dir)):
        monkeypatch.setenv(var, str(val))
    get_settings.cache_clear()
    report = tmp_path / "bench.md"
    try:
        # Mechanics only: the shipped model saw MED in training, so these numbers are not a quality claim.
        r = CliRunner().invoke(app, ["train", "eval-cross-encoder", "minilm-l6-ce-v1", "--dataset", "med",
                                     "--split", "test", "--limit", "3", "--depth", "5", "--report", str(report)])
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    text = report.read_text()
    assert "ce-finetune-med" in text and "| fusion (no cross-encoder) |" in text and "| minilm-l6-ce-v1 |" in text
    assert "3 judged queries" in text and "fused top 5" in text
