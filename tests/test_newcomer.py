"""What a newcomer meets first: settings that need no environment, the starter config, the eval table."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from cascade.config import parse_config, starter_config
from cascade.evaluation import EvalReport, StageMetrics
from cascade.report import rich_table
from cascade.settings import Settings
from cascade.starter import starter_yaml


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No CASCADE_* variables, and a fresh working directory (so no .cascade/settings.env but ours)."""
    for var in list(os.environ):
        if var.startswith("CASCADE_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- settings ---------------------------------------------------------------------------------------------

def test_defaults_are_project_local_like_the_makefile(clean_env):
    s = Settings()
    assert s.index_dir == Path(".cascade/indexes")
    assert s.trained_dir == Path(".cascade/models")
    assert s.cache_dir == Path(".cascade/cache")
    assert s.config_dir == Path("configs")
    assert s.data_dir is None and s.models_dir is None
    assert s.port == 8080 and s.host == "127.0.0.1"


def test_settings_env_file_in_the_working_directory(clean_env, monkeypatch):
    d = clean_env / ".cascade"
    d.mkdir()
    (d / "settings.env").write_text(
        "# written by make from ../shared\n"
        f"CASCADE_DATA_DIR={clean_env / 'shared' / 'datasets'}\n"
        f"CASCADE_MODELS_DIR={clean_env / 'shared' / 'models'}\n"
        "SOMETHING_ELSE=ignored\n", encoding="utf-8")
    s = Settings()
    assert s.data_dir == clean_env / "shared" / "datasets"
    assert s.models_dir == clean_env / "shared" / "models"
    assert s.index_dir == Path(".cascade/indexes")

    monkeypatch.setenv("CASCADE_MODELS_DIR", "/elsewhere/models")  # a real variable wins over the file
    s = Settings()
    assert s.models_dir == Path("/elsewhere/models")
    assert s.data_dir == clean_env / "shared" / "datasets"


def test_settings_env_file_is_relative_to_the_working_directory(clean_env, monkeypatch, tmp_path_factory):
    (clean_env / ".cascade").mkdir()
    (clean_env / ".cascade" / "settings.env").write_text("CASCADE_PORT=9001\n", encoding="utf-8")
    assert Settings().port == 9001
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert Settings().port == 8080


# --- starter config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["embedded", "opensearch"])
@pytest.mark.parametrize("name", ["mydocs", "news-2024", "a.b_c", "123"])
def test_starter_yaml_parses_into_a_valid_config(name, backend):
    text = starter_yaml(name, backend)
    assert "null" not in text
    cfg = parse_config(yaml.safe_load(text), "x")
    assert cfg.index == name
    assert cfg.backend.type == backend
    assert set(cfg.fields) == {"title", "text"} and set(cfg.retrievers) == {"bm25", "knn"}
    assert cfg.fusion.method == "rrf" and cfg.stages == []
    # The same index as the programmatic starter: a config written from either builds the same index.
    assert cfg.index_fingerprint() == starter_config(name).index_fingerprint()
    if backend == "opensearch":
        assert cfg.backend.index == name and cfg.backend.password_env == "OPENSEARCH_PASSWORD"
        assert "password:" not in text  # only the name of the variable that holds it


def test_starter_yaml_commented_examples_are_valid_when_uncommented():
    text = starter_yaml("mydocs")
    assert "keyword" in text and "integer" in text and "date" in text
    assert "type: ltr" in text and "type: cross_encoder" in text
    # Uncomment the example fields, features and stages (dropping `stages: []`): still a valid config.
    lines = []
    for line in text.splitlines():
        if line == "stages: []":
            continue
        m = re.match(r"^(\s*)# ((?:journal|year|published|features|stages|  - ).*)$", line)
        lines.append(m.group(1) + m.group(2) if m else line)
    cfg = parse_config(yaml.safe_load("\n".join(lines)), "x")
    assert {f.type for f in cfg.fields.values()} == {"text", "keyword", "integer", "date"}
    assert [s.type for s in cfg.stages] == ["ltr", "cross_encoder"]
    assert cfg.features is not None


def test_starter_yaml_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        starter_yaml("mydocs", "solr")


# --- the evaluation table ---------------------------------------------------------------------------------

def _stage(name, kind, ndcg, p50, p95, pairs, rows=0):
    cost = {u: v for u, v in (("pairs", float(pairs)), ("rows", float(rows))) if v}
    return StageMetrics(name=name, kind=kind, ndcg_10=ndcg, recall_30=0.81234, recall_100=0.91234, mrr_10=0.61234,
                        p50_ms=p50, p95_ms=p95, ce_pairs_per_query=pairs, step_p50_ms=p50 / 2, cost_per_query=cost)


def _report(**extra) -> EvalReport:
    stages = [_stage("bm25", "retriever", 0.6658, 3.2, 9.8, 0), _stage("knn", "retriever", 0.6451, 12.4, 30.1, 0),
              _stage("fusion", "fusion", 0.6912, 13.0, 31.0, 0), _stage("ltr", "ltr", 0.7731, 40.2, 80.3, 0, 170),
              _stage("cross_encoder_combined_with_ltr", "cross_encoder", 0.7776, 1234.5, 23456.7, 10, 170)]
    rep = EvalReport(dataset="scifact", split="test", index="scifact", config_version="3", queries=300,
                     skipped_queries=0, stages=stages, seconds=42.0)
    for k, v in extra.items():
        setattr(rep, k, v)
    return rep


def _render(rep: EvalReport) -> str:
    buf = io.StringIO()
    Console(width=80, file=buf, force_terminal=False).print(rich_table(rep))
    return buf.getvalue()


@pytest.mark.parametrize("extra", [{}, {"profile": "laptop"}], ids=["today", "with-profile"])
def test_rich_table_fits_80_columns_without_cutting_numbers(extra):
    rep = _report(**extra)
    out = _render(rep)
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for s in rep.stages:
        assert f"{s.ndcg_10:.4f}" in out and f"{s.p95_ms:.1f}" in out
    assert "0.9123" in out and "0.6123" in out  # R@100, MRR@10
    assert "23456.7" in out and "1234.5" in out
    assert "170 rows" in out and "10 pairs" in out  # each step's own work, in its cost unit
    assert "180" not in out  # not the cumulative sum of two units
    # The long step name wraps rather than being cut.
    steps = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│"))
    assert "cross_encoder_combined_with_ltr" in steps
    assert "R@30" not in out and "step p50" not in out
