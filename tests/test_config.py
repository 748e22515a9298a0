from pathlib import Path

import pytest

from cascade.config import BUILTIN_CONFIG_DIR, load_config, load_config_dir, load_config_file
from cascade.errors import ConfigError
from cascade.stages import STAGE_CONFIGS


def write(tmp_path: Path, text: str, name: str = "idx") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


def test_builtin_scifact_config_is_valid():
    cfg = load_config_file(BUILTIN_CONFIG_DIR / "scifact.yaml")
    assert cfg.index == "scifact"
    assert list(cfg.retrievers) == ["bm25", "knn"]
    assert cfg.fusion.method == "rrf" and cfg.fusion.keep == 200
    ltr, ce = cfg.stages
    assert ltr.type == "ltr" and ltr.model == "scifact-ltr" and ltr.keep == 100 and cfg.features is not None
    assert ce.type == "cross_encoder" and ce.stage_name == "cross_encoder" and ce.rerank == 10
    assert ce.fallback == ["cross-encoder/ms-marco-MiniLM-L-6-v2"]


def test_defaults_fill_in(tmp_path):
    cfg = load_config_file(write(tmp_path, "index: idx\n"))
    assert set(cfg.fields) == {"title", "text"} and cfg.fusion.method == "rrf" and cfg.stages == []
    assert cfg.bm25_fields(cfg.retrievers["bm25"]) == {"title": 1.0, "text": 1.0}


@pytest.mark.parametrize(
    "body, key, reason",
    [
        ("index: idx\nfusion: {method: rrf, keep: 0}\n", "fusion.keep", "greater than or equal to 1"),
        ("index: idx\nstages:\n  - {type: magic}\n", "stages.0.type", "unknown type 'magic'"),
        ("index: idx\nstages:\n  - {type: cross_encoder, model: m, keep: -3}\n", "stages.0.keep", "greater than or equal to 1"),
        ("index: idx\nstages:\n  - {type: cross_encoder}\n", "stages.0.model", "Field required"),
        ("index: idx\nretrievers: {bm25: {type: bm25, fields: {body: 2}}}\n", "retrievers.bm25.fields.body", "not a text field"),
        ("index: idx\nfusion: {method: rrf, weights: {sparse: 1}}\n", "fusion.weights.sparse", "no such retriever"),
        ("index: idx\nfusoin: {method: rrf}\n", "fusoin", "unknown key"),
        ("index: idx\nfields: {title: {type: txt}}\n", "fields.title.type", "unknown type 'txt'"),
        ("index: idx\nstages:\n  - {type: cross_encoder, model: m}\n  - {type: cross_encoder, model: n}\n", "stages.1.name", "used twice"),
        ("index: idx\nembedder: {fields: [body]}\n", "embedder.fields", "unknown field 'body'"),
        ("index: idx\nretrievers: {}\n", "retrievers", "at least one retriever"),
    ],
)
def test_invalid_config_names_file_key_and_reason(tmp_path, body, key, reason):
    p = write(tmp_path, body)
    with pytest.raises(ConfigError) as exc:
        load_config_file(p)
    e = exc.value
    assert e.file == str(p)
    assert e.key == key, str(e)
    assert reason in e.reason, str(e)
    assert str(p) in str(e) and key in str(e)


def test_yaml_syntax_error_gives_line(tmp_path):
    p = write(tmp_path, "index: idx\nfusion: {method: rrf\n")
    with pytest.raises(ConfigError) as exc:
        load_config_file(p)
    assert exc.value.key.startswith("line ") and "invalid YAML" in exc.value.reason


def test_index_name_must_match_file(tmp_path):
    with pytest.raises(ConfigError, match="does not match the file name"):
        load_config_file(write(tmp_path, "index: other\n"))


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(write(tmp_path, "- a\n- b\n"))


def test_missing_config_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="writes a starter one"):
        load_config("nothing-here", tmp_path)


def test_config_dir_stops_at_first_bad_file(tmp_path):
    write(tmp_path, "index: good\n", "good")
    write(tmp_path, "index: bad\nfusion: {keep: 0}\n", "bad")
    with pytest.raises(ConfigError) as exc:
        load_config_dir(tmp_path)
    assert exc.value.file.endswith("bad.yaml") and exc.value.key == "fusion.keep"


def test_user_config_dir_overrides_builtin(tmp_path):
    write(tmp_path, "index: scifact\nversion: 7\n", "scifact")
    assert load_config("scifact", tmp_path).version == "7"
    assert load_config("scifact", tmp_path / "absent").version == "3"


def test_every_registered_stage_has_a_type_literal():
    types = [c.model_fields["type"].default for c in STAGE_CONFIGS]
    assert {"cross_encoder", "ltr"} <= set(types) and len(types) == len(set(types))
