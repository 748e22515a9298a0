"""Shared fixtures. Nothing here reaches the network: the hub is offline and data comes from disk."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
from pathlib import Path

import pytest

from cascade.config import IndexConfig, parse_config
from cascade.settings import Settings


def shared_dir(var: str) -> Path | None:
    v = os.environ.get(var)
    return Path(v) if v and Path(v).is_dir() else None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        index_dir=tmp_path / "indexes",
        config_dir=tmp_path / "configs",
        cache_dir=tmp_path / "cache",
        data_dir=shared_dir("CASCADE_DATA_DIR"),
        models_dir=shared_dir("CASCADE_MODELS_DIR"),
    )


@pytest.fixture
def data_dir() -> Path:
    d = shared_dir("CASCADE_DATA_DIR")
    if d is None:
        pytest.skip("CASCADE_DATA_DIR is not set (make test sets it to ../shared/datasets when present)")
    return d


@pytest.fixture
def models_dir() -> Path:
    d = shared_dir("CASCADE_MODELS_DIR")
    if d is None or not (d / "minilm-l6-ce-v1").is_dir():
        pytest.skip("CASCADE_MODELS_DIR with minilm-l6-ce-v1 is not available")
    return d


# A tiny corpus with every field type, small enough to check rankings and filters by hand.
TINY_DOCS = [
    {"_id": "d1", "title": "Solar panels on rooftops", "text": "Photovoltaic cells convert sunlight into electricity.",
     "metadata": {"journal": "Energy", "year": 2019, "published": "2019-05-01", "cites": 12.5}},
    {"_id": "d2", "title": "Wind turbines", "text": "Offshore wind farms produce electricity from moving air. Solar is mentioned once.",
     "metadata": {"journal": "Energy", "year": 2021, "published": "2021-02-11", "cites": 3}},
    {"_id": "d3", "title": "Protein folding", "text": "Amino acid chains fold into three dimensional structures.",
     "metadata": {"journal": "Biology", "year": 2015, "published": "2015-09-30", "cites": 40}},
    {"_id": "d4", "title": "Gene expression in cells", "text": "Transcription factors regulate which genes a cell expresses.",
     "metadata": {"journal": "Biology", "year": 2022, "published": "2022-01-15", "cites": 7}},
    {"_id": "d5", "title": "Battery storage", "text": "Lithium batteries store solar and wind electricity for the night.",
     "metadata": {"journal": ["Energy", "Chemistry"], "year": 2020, "published": "2020-06-01"}},
    {"_id": "d6", "title": "Deep sea fish", "text": "Fish living in the deep ocean glow in the dark.",
     "metadata": {"journal": "Biology", "year": 2018, "published": "2018-03-03", "cites": 1}},
]

TINY_CONFIG = {
    "index": "tiny",
    "fields": {
        "title": {"type": "text"},
        "text": {"type": "text"},
        "journal": {"type": "keyword", "source": "metadata.journal"},
        "year": {"type": "integer", "source": "metadata.year"},
        "published": {"type": "date", "source": "metadata.published"},
        "cites": {"type": "float", "source": "metadata.cites"},
    },
    "embedder": {"model": "default", "max_length": 64},
    "retrievers": {"bm25": {"type": "bm25", "k": 10}, "knn": {"type": "knn", "k": 10}},
    "fusion": {"method": "rrf", "k": 60, "keep": 10},
}


def tiny_config(**overrides) -> IndexConfig:
    data = json.loads(json.dumps(TINY_CONFIG))
    data.update(overrides)
    return parse_config(data, "tiny.yaml")


def write_corpus(path: Path, docs=TINY_DOCS) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture
def tiny_index(settings: Settings):
    """The tiny corpus built into a real embedded index (tantivy + faiss + MiniLM embeddings)."""
    from connectors.embedded import build_index

    cfg = tiny_config()
    build_index(cfg, ((i + 1, dict(d)) for i, d in enumerate(TINY_DOCS)), settings, source="tiny.jsonl")
    return cfg, settings


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """CLI commands run against indexes, configs and caches under ``tmp_path`` (their settings re-read)."""
    from cascade.settings import get_settings

    monkeypatch.setenv("CASCADE_INDEX_DIR", str(tmp_path / "idx"))
    monkeypatch.setenv("CASCADE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.setenv("CASCADE_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
