"""ONNX export and the ONNX Runtime backend, on the real minilm-l6-ce-v1 cross-encoder.

The model is exported once per session, through the CLI, into a temporary
folder. Quality checks use SciFact test pairs only: the model saw SciFact
train, TREC DL, Cranfield, MED, CACM and NPL in training (its TRAINING.md).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cascade.cli import app
from cascade.errors import ModelNotFound
from cascade.settings import Settings, get_settings
from cascade.models.onnx_ce import load_onnx_cross_encoder
from tests.test_rerankers import poisoned_documents_check

runner = CliRunner()


def _models_dir() -> Path:
    d = os.environ.get("CASCADE_MODELS_DIR")
    if not d or not (Path(d) / "minilm-l6-ce-v1").is_dir():
        pytest.skip("CASCADE_MODELS_DIR with minilm-l6-ce-v1 is not available (make test sets it to ../shared/models)")
    return Path(d)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory) -> Path:
    models = _models_dir()
    out = tmp_path_factory.mktemp("onnx") / "minilm-l6-ce-v1-onnx"
    get_settings.cache_clear()
    try:
        r = runner.invoke(app, ["models", "export-onnx", "minilm-l6-ce-v1", "--out", str(out)],
                          env={"CASCADE_MODELS_DIR": str(models)})
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "model.int8.onnx" in r.output
    return out


@pytest.fixture(scope="session")
def local_settings() -> Settings:
    return Settings(models_dir=_models_dir())


def test_export_writes_graphs_tokenizer_and_metadata(onnx_dir):
    import onnx

    for f in ("model.onnx", "model.int8.onnx", "tokenizer.json", "tokenizer_config.json", "cascade-onnx.json"):
        assert (onnx_dir / f).is_file(), f
    assert not (onnx_dir / "model.raw.onnx").exists()
    meta = json.loads((onnx_dir / "cascade-onnx.json").read_text())
    assert meta["source"] == "minilm-l6-ce-v1" and meta["opset"] >= 17 and meta["max_length"] == 512
    assert meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    fp32, int8 = meta["files"]["model.onnx"], meta["files"]["model.int8.onnx"]
    assert fp32["precision"] == "float32" and fp32["check"]["max_abs_diff"] < 1e-3 and fp32["check"]["pairs"] >= 6
    assert int8["quantization"]["method"] == "onnxruntime.quantization.quantize_dynamic"
    assert int8["quantization"]["weights"].startswith("QInt8")
    assert (onnx_dir / "model.int8.onnx").stat().st_size < (onnx_dir / "model.onnx").stat().st_size / 3
    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    for inp in graph.input:  # batch and sequence are dynamic axes
        dims = inp.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"], inp.name


def _scifact_pairs(n_queries: int = 8):
    from cascade.datasets import corpus_file, iter_corpus, load_qrels, load_queries

    data = os.environ.get("CASCADE_DATA_DIR")
    if not data or not (Path(data) / "scifact").is_dir():
        pytest.skip("CASCADE_DATA_DIR with scifact/ is not available")
    folder = Path(data) / "scifact"
    queries, qrels = load_queries(folder), load_qrels(folder, "test")  # test only: train was seen in training
    docs = {r["_id"]: f"{r['title']} {r['text']}" for _, r in iter_corpus(corpus_file(folder))}
    ids = sorted(docs)
    rng = np.random.default_rng(7)
    out = []
    for q in list(qrels)[:n_queries]:
        judged = next(iter(qrels[q]))
        out.append((queries[q], [docs[judged], docs[ids[int(rng.integers(len(ids)))]]]))
    return out


def test_fp32_matches_torch_and_int8_keeps_the_order_on_scifact_test(onnx_dir, local_settings):
    from scipy.stats import spearmanr

    from cascade.models.torch_ce import load_cross_encoder

    pairs = _scifact_pairs()
    torch_ce = load_cross_encoder(["minilm-l6-ce-v1"], local_settings, max_length=256, batch_size=8, dtype="float32")
    fp32 = load_onnx_cross_encoder([str(onnx_dir)], local_settings, onnx_file="model.onnx", max_length=256)
    int8 = load_onnx_cross_encoder([str(onnx_dir)], local_settings, onnx_file="model.int8.onnx", max_length=256)
    ref, a, b = (np.concatenate([s.score(q, d) for q, d in pairs]) for s in (torch_ce, fp32, int8))
    assert len(ref) == 16
    assert np.abs(a - ref).max() < 1e-3, np.abs(a - ref).max()
    rho = spearmanr(b, ref).statistic
    assert rho > 0.95, (rho, b, ref)
    assert fp32.dtype == "float32" and int8.dtype == "int8"


def test_onnx_scorers_survive_poisoned_documents(onnx_dir, local_settings):
    for f in ("model.onnx", "model.int8.onnx"):
        scorer = load_onnx_cross_encoder([str(onnx_dir)], local_settings, onnx_file=f, max_length=128, batch_size=3)
        poisoned_documents_check(scorer, exact=f == "model.onnx")


def test_stage_config_selects_the_onnx_backend(onnx_dir, tmp_path):
    from cascade.stages import BuildContext
    from cascade.stages.cross_encoder import CrossEncoderConfig
    from tests.conftest import tiny_config

    # A name under CASCADE_TRAINED_DIR, where the Makefile exports to.
    settings = Settings(trained_dir=onnx_dir.parent, models_dir=tmp_path / "none")
    cfg = CrossEncoderConfig(type="cross_encoder", backend="onnx", model=onnx_dir.name, onnx_file="model.int8.onnx",
                             max_length=128, rerank=5)
    stage = cfg.build(BuildContext(settings=settings, index=tiny_config()))
    d = stage.describe()
    assert d["backend"] == "onnx" and d["dtype"] == "int8" and d["model"].endswith("model.int8.onnx")
    s = asyncio.run(stage.scorer.score("solar power", ["solar panels make power", "deep sea fish"]))  # async scorer
    assert s[0] > s[1]


def test_missing_exports_are_named_with_the_way_to_make_them(tmp_path, local_settings):
    with pytest.raises(ModelNotFound) as e:
        load_onnx_cross_encoder(["no-such-export", str(tmp_path)], local_settings, onnx_file="model.int8.onnx")
    msg = str(e.value)
    assert "no-such-export: not a folder" in msg and f"{tmp_path} has no model.int8.onnx" in msg
    assert "cascade models export-onnx" in msg


def test_exporting_an_unknown_model_fails_with_its_name(tmp_path):
    get_settings.cache_clear()
    try:
        r = runner.invoke(app, ["models", "export-onnx", "no-such-model", "--out", str(tmp_path / "x")],
                          env={"CASCADE_MODELS_DIR": str(tmp_path)})
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 2 and "no-such-model" in r.output and "offline" in r.output


def test_bench_scores_the_same_pairs_with_every_backend(onnx_dir, tiny_index, local_settings):
    from cascade.bench.backends import compare_backends
    from cascade.builder import open_cascade
    from cascade.models.torch_ce import load_cross_encoder

    cfg, settings = tiny_index
    casc = open_cascade(cfg, settings)
    queries = {"q1": "solar electricity", "q2": "protein structure", "q3": "fish in the ocean"}
    qrels = {"q1": {"d1": 1, "d5": 1}, "q2": {"d3": 1}, "q3": {"d6": 1}}
    scorers = {
        "torch fp32": load_cross_encoder(["minilm-l6-ce-v1"], local_settings, max_length=64, batch_size=4,
                                         dtype="float32"),
        "onnx fp32": load_onnx_cross_encoder([str(onnx_dir)], local_settings, max_length=64),
        "onnx int8": load_onnx_cross_encoder([str(onnx_dir)], local_settings, onnx_file="model.int8.onnx",
                                             max_length=64),
    }
    bench = compare_backends(casc, queries, qrels, scorers, ["title", "text"], depth=4, notes=["a note"])
    assert bench.queries == 3 and bench.depth == 4 and bench.pairs_mean == 4 and bench.reference == "torch fp32"
    by = bench.by_name()
    assert by["torch fp32"].spearman == 1.0 and by["torch fp32"].max_abs_diff == 0.0
    assert by["onnx fp32"].max_abs_diff < 1e-3 and by["onnx fp32"].ndcg_10 == by["torch fp32"].ndcg_10
    assert all(r.pairs_per_s > 0 and 0 < r.ndcg_10 <= 1 for r in bench.results)
    md = bench.markdown("cascade bench-backends --limit 3", "a machine")
    assert "Command: `cascade bench-backends --limit 3`" in md and "| onnx int8 |" in md and "a note" in md
