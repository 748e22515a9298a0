"""The CLI as a user runs it: index a corpus file, search it, see errors that say what is wrong."""

import json

import pytest
from typer.testing import CliRunner

from cascade.cli import app
from cascade.settings import get_settings
from tests.conftest import TINY_DOCS, write_corpus

runner = CliRunner()


@pytest.fixture
def env(cli_env):
    return cli_env


def run(*args):
    return runner.invoke(app, list(args))


def test_index_own_corpus_writes_starter_config_then_search(env):
    corpus = write_corpus(env / "docs.jsonl")
    r = run("index", "--corpus", str(corpus), "--index", "mydocs")
    assert r.exit_code == 0, r.output
    assert "indexed 6 documents" in r.output
    cfg_file = env / "configs" / "mydocs.yaml"
    assert cfg_file.is_file() and "index: mydocs" in cfg_file.read_text()
    # A second run reuses the index.
    r = run("index", "--corpus", str(corpus), "--index", "mydocs")
    assert r.exit_code == 0 and "up to date" in r.output

    r = run("search", "--index", "mydocs", "--json", "--size", "2", "photovoltaic sunlight")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["hits"][0]["id"] == "d1" and len(out["hits"]) == 2 and out["degraded"] == []

    r = run("search", "--index", "mydocs", "--explain", "--json", "deep ocean")
    out = json.loads(r.stdout)
    assert [t["name"] for t in out["trace"]] == ["bm25", "knn", "fusion"]
    assert [p["name"] for p in out["plan"]] == ["bm25", "knn", "fusion"]
    assert "retrievers" in out["hits"][0] and out["hits"][0]["id"] == "d6"

    r = run("search", "--index", "mydocs", "--explain", "solar")
    assert r.exit_code == 0 and "fusion" in r.output and "bm25" in r.output


def test_search_errors_name_the_problem(env):
    write_corpus(env / "docs.jsonl")
    assert run("index", "--corpus", str(env / "docs.jsonl"), "--index", "mydocs").exit_code == 0
    r = run("search", "--index", "mydocs", "   ")
    assert r.exit_code == 2 and "text: query text is empty" in r.output
    r = run("search", "--index", "mydocs", "--size", "500", "solar")
    assert r.exit_code == 2 and "size: must be between 1 and 100" in r.output
    r = run("search", "--index", "mydocs", "--filter", "colour=red", "solar")
    assert r.exit_code == 2 and "filters.colour: unknown field" in r.output
    r = run("search", "--index", "mydocs", "--filter", "oops", "solar")
    assert r.exit_code == 2 and "expected FIELD=VALUE" in r.output
    r = run("search", "--index", "absent", "solar")
    assert r.exit_code == 2 and "no cascade config for index 'absent'" in r.output


def test_bad_corpus_line_stops_or_is_skipped(env):
    p = env / "docs.jsonl"
    p.write_text(json.dumps(TINY_DOCS[0]) + "\n{broken\n" + json.dumps(TINY_DOCS[1]) + "\n")
    r = run("index", "--corpus", str(p), "--index", "broken")
    assert r.exit_code == 2 and f"{p}:2: not valid JSON" in r.output
    r = run("index", "--corpus", str(p), "--index", "broken", "--skip-bad-lines")
    assert r.exit_code == 0 and "indexed 2 documents" in r.output and "skipped 1 bad lines" in r.output


def test_index_argument_errors(env):
    assert "either --dataset" in run("index").output
    assert "--corpus needs --index" in run("index", "--corpus", "x.jsonl").output
    r = run("index", "--corpus", str(env / "nope.jsonl"), "--index", "x")
    assert r.exit_code == 2 and "is not a file" in r.output


def test_config_check_reports_file_and_key(env):
    d = env / "configs"
    d.mkdir()
    (d / "good.yaml").write_text("index: good\n")
    r = run("config", "check", str(d))
    assert r.exit_code == 0 and "ok good v1: bm25 → knn → fusion" in r.output
    (d / "zbad.yaml").write_text("index: zbad\nstages:\n  - {type: cross_encoder, model: m, rerank: 0}\n")
    r = run("config", "check", str(d))
    assert r.exit_code == 2 and "zbad.yaml: stages.0.rerank" in r.output


def test_filter_flag_parsing():
    from cascade.cli.common import _parse_filter

    assert _parse_filter(["year>=2010", "year<2020", "journal=Nature,Cell", "x=3"]) == {
        "year": {"gte": 2010, "lt": 2020}, "journal": ["Nature", "Cell"], "x": 3}


def test_features_log_train_and_serve_an_ltr_model(env, monkeypatch):
    import yaml

    from tests.conftest import TINY_CONFIG

    monkeypatch.setenv("CASCADE_TRAINED_DIR", str(env / "models"))
    cfg = {**TINY_CONFIG, "features": {"version": 1}}
    _tiny_dataset(env, monkeypatch, features={"version": 1})

    r = run("features", "log", "--dataset", "tiny", "--split", "train", "--out", str(env / "log.parquet"))
    assert r.exit_code == 0, r.output
    assert "5 queries" in r.output and "5 relevant candidates" in r.output
    r = run("train", "ltr", "--data", str(env / "log.parquet"), "--out", "tiny-ltr", "--valid-fraction", "0",
            "--rounds", "5")
    assert r.exit_code == 0, r.output
    assert (env / "models" / "tiny-ltr" / "model.txt").is_file()
    r = run("train", "ltr", "--data", str(env / "log.parquet"), "--monotone", "nope=1")
    assert r.exit_code == 2 and "unknown feature 'nope'" in r.output

    (env / "configs" / "tiny.yaml").write_text(yaml.safe_dump({**cfg, "stages": [{"type": "ltr", "model": "tiny-ltr"}]}))
    r = run("search", "--index", "tiny", "--explain", "--json", "solar electricity")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [t["name"] for t in out["trace"]] == ["bm25", "knn", "fusion", "features", "ltr"]
    assert "kw.title.bm25" in out["hits"][0]["features"] and "ltr" in out["hits"][0]["stages"]
    r = run("search", "--index", "tiny", "--explain", "solar electricity")
    assert r.exit_code == 0 and "features of the top hits" in r.output


# --- rank profiles: search and eval -----------------------------------------------------------------------------

PROFILES = {"lite": {"inherit": "default", "fusion": {"keep": 5}}}


def _tiny_dataset(env, monkeypatch, **config):
    """The tiny corpus as a BEIR dataset (5 judged train queries) under CASCADE_DATA_DIR, indexed with ``config``."""
    import yaml

    from tests.conftest import TINY_CONFIG

    data = env / "data" / "tiny"
    (data / "qrels").mkdir(parents=True)
    write_corpus(data / "corpus.jsonl")
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(
        ["solar electricity", "protein structure", "ocean fish", "battery storage", "gene cells"])))
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\nq1\td3\t1\nq2\td6\t1\nq3\td5\t1\nq4\td4\t1\n")
    monkeypatch.setenv("CASCADE_DATA_DIR", str(env / "data"))
    get_settings.cache_clear()
    (env / "configs").mkdir(exist_ok=True)
    (env / "configs" / "tiny.yaml").write_text(yaml.safe_dump({**TINY_CONFIG, **config}))
    r = run("index", "--dataset", "tiny")
    assert r.exit_code == 0, r.output


def _fusion_keep(plan):
    return next(p["keep"] for p in plan if p["name"] == "fusion")


def test_search_takes_a_rank_profile_and_names_the_profiles_of_an_unknown_one(env, monkeypatch):
    _tiny_dataset(env, monkeypatch, profiles=PROFILES)
    r = run("search", "--index", "tiny", "--json", "--explain", "solar electricity")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["profile"] == "default" and _fusion_keep(out["plan"]) == 10
    r = run("search", "--index", "tiny", "--profile", "lite", "--json", "--explain", "--size", "10", "solar electricity")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["profile"] == "lite" and _fusion_keep(out["plan"]) == 5 and len(out["hits"]) <= 5
    assert out["hits"][0]["id"] == "d1"
    r = run("search", "--index", "tiny", "--profile", "lite", "solar electricity")
    assert r.exit_code == 0 and "(lite)" in r.output
    r = run("search", "--index", "tiny", "--profile", "nope", "solar")
    assert r.exit_code == 2 and "index tiny has no rank profile 'nope'; its profiles: default, lite" in r.output


def test_eval_runs_two_profiles_on_the_same_queries_in_one_pass(env, monkeypatch):
    _tiny_dataset(env, monkeypatch, profiles=PROFILES)
    out, report, plot = env / "eval.json", env / "bench.md", env / "img" / "eval.png"
    r = run("eval", "--dataset", "tiny", "--split", "train", "--profile", "default", "--profile", "lite",
            "--json", str(out), "--report", str(report), "--plot", str(plot))
    assert r.exit_code == 0, r.output
    assert "profile default" in r.output and "profile lite" in r.output  # one table per profile
    assert "profiles side by side" in r.output  # and each profile's last step beside the other's
    data = json.loads(out.read_text())
    reps = data["profiles"]
    assert [p["profile"] for p in reps] == ["default", "lite"] and all(p["queries"] == 5 for p in reps)
    assert [_fusion_keep(p["plan"]) for p in reps] == [10, 5]
    assert reps[0]["seconds"] == reps[1]["seconds"]  # one pass: one clock for both
    assert [s["name"] for s in reps[1]["stages"]] == ["bm25", "knn", "fusion"]
    assert reps[0]["failed_queries"] == reps[1]["failed_queries"] == 0
    text = report.read_text()
    assert "<!-- eval-tiny-train:start -->" in text and "<!-- eval-tiny-train-lite:start -->" in text
    assert "eval-default.png" in text and "eval-lite.png" in text
    assert (env / "img" / "eval-default.png").is_file() and (env / "img" / "eval-lite.png").is_file()

    r = run("eval", "--dataset", "tiny", "--split", "train", "--profile", "lite", "--budget-ms", "60000",
            "--json", str(out))
    assert r.exit_code == 0, r.output
    one = json.loads(out.read_text())  # one profile: the report itself, as before profiles
    assert one["profile"] == "lite" and "profiles" not in one and one["queries"] == 5
    r = run("eval", "--dataset", "tiny", "--split", "train", "--json", str(out))
    assert r.exit_code == 0 and json.loads(out.read_text())["profile"] == "default"
    r = run("eval", "--dataset", "tiny", "--split", "train", "--profile", "lite", "--profile", "nope")
    assert r.exit_code == 2 and "no rank profile 'nope'; its profiles: default, lite" in r.output


def test_eval_warns_about_failed_steps_with_their_errors(env, monkeypatch):
    broken = {"type": "cross_encoder", "backend": "tei", "model": "m", "rerank": 3,
              "remote": {"url": "http://127.0.0.1:9", "retries": 0, "timeout_s": 2}}
    _tiny_dataset(env, monkeypatch, profiles={"broken": {"inherit": "default", "stages": [broken]}})
    r = run("eval", "--dataset", "tiny", "--split", "train", "--profile", "default", "--profile", "broken")
    assert r.exit_code == 0, r.output
    assert "profile broken: steps failed: cross_encoder on 5 queries" in r.output
    assert "query q0: step cross_encoder failed" in r.output
    assert "profile default:" not in r.output


def test_serve_without_index_config_falls_back_to_built_in_configs(tmp_path):
    from cascade.cli.serve import config_source
    from cascade.errors import ConfigError
    from cascade.settings import Settings

    s = Settings(config_dir=tmp_path / "configs", index_dir=tmp_path / "idx")  # ./configs does not exist
    (tmp_path / "idx" / "scifact").mkdir(parents=True)
    (tmp_path / "idx" / "scifact" / "manifest.json").write_text("{}")  # `make demo` built the scifact index
    src = config_source(None, s)
    assert src.builtin_fallback and src.index_dir == s.index_dir and src.directory == s.config_dir
    configs = src.read()
    assert list(configs) == ["scifact"] and configs["scifact"][1].parent.name == "configs"  # the built-in one
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("index: mine\n")
    assert sorted(config_source(None, s).read()) == ["mine", "scifact"]
    strict = config_source(tmp_path / "elsewhere", s)  # --index-config DIR: that folder only, and it must exist
    assert not strict.builtin_fallback
    with pytest.raises(ConfigError, match="config directory does not exist"):
        strict.read()
