"""Distilling the cascade's reranker into its bi-encoder, end to end on a tiny collection: the real cross-encoder
as teacher, margin-MSE training of all-MiniLM-L6-v2, a new index version embedded with it, evaluation before and
after, and evaluation queries refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cascade.cli import app
from tests.conftest import TINY_CONFIG, TINY_DOCS, tiny_config

runner = CliRunner()

QUERIES = {"q1": "solar electricity", "q2": "cells genes expression", "q3": "wind farms", "q4": "deep sea fish",
           "t1": "deep sea fish", "t2": "battery storage"}
TRAIN = {"q1": {"d1": 1}, "q2": {"d4": 1}, "q3": {"d2": 1}, "q4": {"d6": 1}}
TEST = {"t1": {"d6": 1}, "t2": {"d5": 1}}


@pytest.fixture
def collection(tmp_path, monkeypatch, models_dir):
    from cascade.settings import Settings, get_settings
    from connectors.embedded import build_index

    ds = tmp_path / "tinyset"
    (ds / "qrels").mkdir(parents=True)
    (ds / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in TINY_DOCS))
    (ds / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    for split, qr in (("train", TRAIN), ("test", TEST)):
        (ds / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"{q}\t{d}\t{g}\n" for q, docs in qr.items() for d, g in docs.items()))
    stages = [{"type": "cross_encoder", "model": "minilm-l6-ce-v1", "rerank": 6, "max_length": 64}]
    cfg = tiny_config(stages=stages)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text(yaml.safe_dump({**TINY_CONFIG, "stages": stages}))
    env = {"CASCADE_INDEX_DIR": tmp_path / "idx", "CASCADE_CONFIG_DIR": tmp_path / "configs",
           "CASCADE_CACHE_DIR": tmp_path / "cache", "CASCADE_TRAINED_DIR": tmp_path / "models",
           "CASCADE_MODELS_DIR": models_dir, "CASCADE_TORCH_THREADS": 1}  # one thread: no spinning on 2 busy cores
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    get_settings.cache_clear()
    build_index(cfg, ((i + 1, dict(d)) for i, d in enumerate(TINY_DOCS)), Settings(), source="tiny.jsonl")
    yield ds, tmp_path
    get_settings.cache_clear()


def test_train_embedder_end_to_end(collection):
    from cascade.models.embedder import load_embedder
    from cascade.settings import get_settings

    ds, tmp = collection
    res = runner.invoke(app, ["train", "embedder", "--dataset", str(ds), "--index", "tiny", "--split", "test"])
    assert res.exit_code == 2 and "evaluation split" in res.output

    res = runner.invoke(app, ["train", "embedder", "--dataset", str(ds), "--index", "tiny", "--out", "tiny-emb",
                              "--new-index", "tiny-v2", "--pairs", "3", "--batch", "2", "--epochs", "2",
                              "--learning-rate", "1e-4", "--json", str(tmp / "distill.json")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp / "models" / "tiny-emb" / "cascade-training.json").read_text())
    assert meta["loss"] == "margin-mse" and meta["steps"] >= 2 and meta["pairs"] >= 6
    assert meta["data"]["dropped_eval_queries"] == 1  # q4's text is the test query t1's: never trained on
    assert meta["teacher_scale"] > 0 and np.isfinite(meta["loss_last"])

    new_cfg = yaml.safe_load((tmp / "configs" / "tiny-v2.yaml").read_text())
    assert new_cfg["index"] == "tiny-v2" and new_cfg["embedder"]["model"].endswith("tiny-emb")
    manifest = json.loads((tmp / "idx" / "tiny-v2" / "manifest.json").read_text())
    assert manifest["docs"] == len(TINY_DOCS) and manifest["embedder"].endswith("tiny-emb")
    # The new version's vectors come from the fine-tuned model, not the shipped one.
    s = get_settings()
    base = load_embedder("default", s, 64).encode_query("solar electricity")
    tuned = load_embedder(str(tmp / "models" / "tiny-emb"), s, 64).encode_query("solar electricity")
    assert 0.5 < float(base @ tuned) < 0.99999
    out = json.loads((tmp / "distill.json").read_text())
    for side in ("before", "after"):
        steps = {st["name"]: st for st in out[side]["stages"]}
        assert out[side]["queries"] == 2 and "knn" in steps and "cross_encoder" in steps
    assert out["before"]["stages"][-1]["ce_pairs_per_query"] == out["after"]["stages"][-1]["ce_pairs_per_query"]
