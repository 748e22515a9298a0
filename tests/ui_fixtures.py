"""A small real SciFact index for the workbench's tests: BM25 + MiniLM kNN, RRF, features, an LTR model
trained here on SciFact train queries, the shared cross-encoder, three profiles and an interleaving experiment.

About 200 documents: the relevant documents of the first test and train queries plus the corpus's first
documents as distractors. Built once per test session (both workbench test modules reuse the folder).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade.settings import Settings

TEST_QUERIES = 12  # judged test queries whose relevant documents are indexed (what the UI tests search)
TRAIN_QUERIES = 20  # judged train queries for the LTR model
DOCS = 200


def config(model_dir: str) -> dict[str, Any]:
    return {
        "index": "scifact",
        "version": "wb-1",
        "description": "SciFact subset for the workbench tests",
        "fields": {"title": {"type": "text", "analyzer": "english"}, "text": {"type": "text", "analyzer": "english"}},
        "embedder": {"model": "default", "fields": ["title", "text"], "max_length": 128},
        "retrievers": {"bm25": {"type": "bm25", "k": 50, "fields": {"title": 1.0, "text": 1.0}},
                       "knn": {"type": "knn", "k": 50}},
        "fusion": {"method": "rrf", "k": 60, "keep": 60},
        "features": {"version": 1, "keyword": {"k1": 1.2, "b": 0.75}, "retrieval": True, "semantic": True,
                     "query": True},
        "stages": [
            {"type": "ltr", "model": model_dir, "keep": 30},
            {"type": "cross_encoder", "model": "minilm-l6-ce-v1", "fields": ["title", "text"], "rerank": 8,
             "max_length": 128, "batch_size": 16,
             "combine": {"normalize": "zscore", "weights": {"cross_encoder": 1.0, "ltr": 2.0}}},
        ],
        "limits": {"max_size": 100, "max_query_chars": 2048},
        "profiles": {
            "ltr": {"inherit": "default", "description": "LTR, no cross-encoder", "stages": {"cross_encoder": None}},
            "fusion": {"inherit": "default", "description": "RRF only", "stages": []},
        },
        "experiments": {"ce-pays": {"mode": "interleave", "arms": ["fusion", "default"], "traffic": 1.0,
                                    "sample_size": 600, "description": "does LTR + CE beat fusion?"}},
    }


@dataclass
class WorkbenchIndex:
    root: Path
    config_dir: Path
    data_dir: Path
    models_dir: Path
    queries: dict[str, str]  # the judged test queries whose relevant documents are indexed
    qrels: dict[str, dict[str, int]]

    def settings(self, tmp: Path, **kw: Any) -> Settings:
        return Settings(index_dir=self.root / "idx", config_dir=self.config_dir, cache_dir=self.root / "cache",
                        trained_dir=self.root / "models", data_dir=self.data_dir, models_dir=self.models_dir,
                        judgments_dir=tmp / "judgments", evals_dir=tmp / "evals", **kw)


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def build(root: Path, data: Path, models: Path) -> WorkbenchIndex:
    from cascade.builder import open_cascade
    from cascade.config import parse_config
    from cascade.datasets import corpus_file, load_qrels, load_queries
    from connectors.embedded import build_index
    from features.logging import log_features
    from features.training.ltr import train_ltr

    folder = data / "scifact"
    queries = load_queries(folder)
    test = dict(list(load_qrels(folder, "test").items())[:TEST_QUERIES])
    train = dict(list(load_qrels(folder, "train").items())[:TRAIN_QUERIES])
    wanted = {d for q in (*test.values(), *train.values()) for d in q}
    corpus = _read_jsonl(corpus_file(folder))
    docs = [d for d in corpus if str(d["_id"]) in wanted]
    docs += [d for d in corpus if str(d["_id"]) not in wanted][: max(0, DOCS - len(docs))]
    model_dir = str(root / "models" / "wb-ltr")
    cfg = parse_config(config(model_dir), "scifact.yaml")
    s = Settings(index_dir=root / "idx", config_dir=root / "configs", cache_dir=root / "cache",
                 trained_dir=root / "models", data_dir=data, models_dir=models)
    build_index(cfg, ((i + 1, dict(d)) for i, d in enumerate(docs)), s, source="scifact-subset")
    log = root / "train.parquet"
    asyncio.run(log_features(open_cascade(cfg, s, stages=False), queries, train, log, source="scifact/train"))
    train_ltr([log], Path(model_dir), valid_fraction=0.0, rounds=40, early_stopping=0)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "scifact.yaml").write_text(yaml.safe_dump(config(model_dir), sort_keys=False))
    return WorkbenchIndex(root, root / "configs", data, models, {q: queries[q] for q in test}, test)


_built: dict[str, WorkbenchIndex] = {}


@pytest.fixture(scope="session")
def workbench_index(tmp_path_factory) -> WorkbenchIndex:
    """Built once per session even though two modules import this fixture (each import is its own definition)."""
    data = os.environ.get("CASCADE_DATA_DIR")
    models = os.environ.get("CASCADE_MODELS_DIR")
    if not data or not (Path(data) / "scifact").is_dir():
        pytest.skip("CASCADE_DATA_DIR with scifact/ is not available (make test sets it to ../shared/datasets)")
    if not models or not (Path(models) / "minilm-l6-ce-v1").is_dir():
        pytest.skip("CASCADE_MODELS_DIR with minilm-l6-ce-v1 is not available")
    if "index" not in _built:
        _built["index"] = build(tmp_path_factory.mktemp("workbench"), Path(data), Path(models))
    return _built["index"]
