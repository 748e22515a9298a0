"""LightGBM LTR end to end on a real collection (Cranfield): feature log, training, the stage, CV."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cascade.config import parse_config
from cascade.controller import Cascade
from cascade.builder import open_cascade
from cascade.datasets import corpus_file, iter_corpus, load_qrels, load_queries
from cascade.errors import CascadeError, ConfigError, DatasetError
from cascade.query import Query
from cascade.settings import Settings
from cascade.stages.ltr import LTRModel
from connectors.embedded import build_index
from features.logging import log_features
from features.training.ltr import cross_validate, load_logs, train_ltr

pytestmark = pytest.mark.slow

BASE = {
    "index": "cranfield",
    "embedder": {"model": "default", "max_length": 128},
    "retrievers": {"bm25": {"k": 50}, "knn": {"k": 50}},
    "fusion": {"method": "rrf", "k": 60, "keep": 100},
    "features": {"version": "1"},
}


@pytest.fixture(scope="module")
def cran(tmp_path_factory):
    data = os.environ.get("CASCADE_DATA_DIR")
    if not data or not Path(data, "cranfield").is_dir():
        pytest.skip("CASCADE_DATA_DIR with cranfield/ is not available")
    folder = Path(data) / "cranfield"
    root = tmp_path_factory.mktemp("cran")
    settings = Settings(index_dir=root / "idx", trained_dir=root / "models", config_dir=root / "cfg",
                        data_dir=Path(data))
    cfg = parse_config(BASE, "cranfield.yaml")
    build_index(cfg, iter_corpus(corpus_file(folder)), settings, source="cranfield")
    queries, qrels = load_queries(folder), load_qrels(folder, "test")
    log = root / "cran.parquet"
    import asyncio

    stats = asyncio.run(log_features(open_cascade(cfg, settings), queries, qrels, log, source="cranfield/test"))
    return cfg, settings, queries, qrels, log, stats


def test_feature_log_has_one_row_per_candidate(cran):
    cfg, settings, queries, qrels, log, stats = cran
    data = load_logs([log])
    assert stats["queries"] == 225 and stats["rows"] == len(data.x) and stats["positives"] > 500
    assert data.names[0] == "kw.title.bm25" and data.x.shape[1] == len(data.names)
    assert np.isfinite(data.x).all() and set(np.unique(data.labels)) <= {0, 1, 2, 3, 4}
    assert list(data.groups()[:3]) == [int((data.qids == q).sum()) for q in data.query_order()[:3]]
    assert data.meta["index"] == "cranfield" and data.meta["feature_names"] == data.names


async def test_unknown_judged_query_ids_are_an_error(cran, tmp_path):
    cfg, settings, queries, qrels, *_ = cran
    bad = {**{q: qrels[q] for q in list(qrels)[:3]}, "q-404": {"1": 1}}
    with pytest.raises(DatasetError, match="q-404"):
        await log_features(open_cascade(cfg, settings), queries, bad, tmp_path / "x.parquet", source="t")


def test_train_writes_text_model_metadata_and_plot_and_serves(cran):
    cfg, settings, queries, qrels, log, _ = cran
    out = settings.trained_dir / "cran-ltr"
    res = train_ltr([log], out, valid_fraction=0.2, seed=7, rounds=200,
                    monotone=["kw.text.bm25=1"])
    assert (out / "model.txt").read_text().startswith("tree")  # LightGBM's text format, not a pickle
    meta = json.loads((out / "model.json").read_text())
    assert meta["features"]["names"] == load_logs([log]).names and len(meta["training_data"]["sha256"]) == 64
    assert meta["params"]["monotone_constraints"][meta["features"]["names"].index("kw.text.bm25")] == 1
    assert meta["params"]["objective"] == "lambdarank" and meta["best_iteration"] >= 1
    assert (out / "importance.png").stat().st_size > 1000
    assert 0 < res.metrics["valid_ndcg@10"] <= 1

    # Training is reproducible: same seed, same model.
    again = train_ltr([log], settings.trained_dir / "cran-ltr-2", valid_fraction=0.2, seed=7, rounds=200,
                      monotone=["kw.text.bm25=1"])
    assert (settings.trained_dir / "cran-ltr-2" / "model.txt").read_text().split("parameters:")[0] == \
        (out / "model.txt").read_text().split("parameters:")[0]
    assert again.best_iteration == res.best_iteration

    served = parse_config({**BASE, "stages": [{"type": "ltr", "model": "cran-ltr", "keep": 30}]}, "cranfield.yaml")
    c = open_cascade(served, settings)
    import asyncio

    res_q = asyncio.run(c.search(Query(queries["1"], size=5)))
    ltr = res_q.traces[-1]
    assert ltr.name == "ltr" and ltr.n_out == 30 and ltr.scored == ltr.n_in and not ltr.error
    hit = res_q.hits(explain=True)[0]
    assert "ltr" in hit["stages"] and hit["features"]["kw.title.bm25"] is not None


def test_model_of_another_feature_set_is_refused_at_start_up(cran):
    cfg, settings, _, _, log, _ = cran
    train_ltr([log], settings.trained_dir / "m1", rounds=5)
    other = parse_config({**BASE, "features": {"version": "2", "semantic": False},
                          "stages": [{"type": "ltr", "model": "m1"}]}, "cranfield.yaml")
    with pytest.raises(ConfigError) as e:
        open_cascade(other, settings)
    assert e.value.key == "stages.0.model" and "sem.cosine" in e.value.reason and "retrain" in e.value.reason


def test_corrupt_unknown_and_missing_models(cran, tmp_path):
    cfg, settings, _, _, log, _ = cran
    good = settings.trained_dir / "m2"
    train_ltr([log], good, rounds=5)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.json").write_text((good / "model.json").read_text())
    (corrupt / "model.txt").write_text((good / "model.txt").read_text()[:200])
    with pytest.raises(ConfigError, match="not a valid LightGBM text model"):
        LTRModel.load(corrupt)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "model.json").write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ConfigError, match="unknown model format 'pickle'"):
        LTRModel.load(unknown)
    missing = parse_config({**BASE, "stages": [{"type": "ltr", "model": "never-trained"}]}, "cranfield.yaml")
    with pytest.raises(ConfigError, match="cascade train ltr"):
        open_cascade(missing, settings)


def test_training_refuses_logs_without_positives(cran, tmp_path):
    import pyarrow.parquet as pq

    *_, log, _ = cran
    t = pq.read_table(log)
    import pyarrow as pa

    zero = t.set_column(t.schema.get_field_index("label"), "label", pa.array([0] * len(t)))
    pq.write_table(zero, tmp_path / "zero.parquet")
    with pytest.raises(CascadeError, match="no relevant candidate"):
        train_ltr([tmp_path / "zero.parquet"], tmp_path / "m")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DatasetError, match="not a readable Parquet"):
        train_ltr([tmp_path / "junk.parquet"], tmp_path / "m")


def test_cross_validation_on_cranfield(cran):
    *_, qrels, log, _ = cran
    folds = cross_validate([log], qrels, folds=3, rounds=200)
    assert len(folds) == 3 and sum(f["queries"] for f in folds) == 225
    assert all(0 < f["ltr_ndcg@10"] < 1 and 0 < f["fusion_ndcg@10"] < 1 for f in folds)
