"""A hostile corpus, indexed as a user would (`cascade index`), on both backends.

``tests/fixtures/hostile/corpus.jsonl`` holds every bad line the hardening
issue reported (NaN and Infinity numbers, a lone surrogate escape, a raw 0xff
byte, an integer of 2**70, a date tantivy cannot hold, JSON nested 5,000
deep) next to hostile but valid documents (NUL bytes, right-to-left override
characters, a prompt injection, an emoji); the tests add a 2 MB document.
A bad line is ``FILE:LINE: reason`` and, under ``--skip-bad-lines``, skipped
and counted once: the CLI's count and the manifest's agree. Valid hostile
text is indexed, found and returned exactly as it was written.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade.builder import open_cascade
from cascade.cli import app
from cascade.config import load_config_file
from cascade.datasets import LoadStats, iter_corpus
from cascade.errors import CorpusError, QueryError
from cascade.query import Query
from cascade.settings import Settings
from connectors.records import typed_fields

FIXTURE = Path(__file__).parent / "fixtures" / "hostile"
BIG_WORD = "zyzzyvaquux"

# Line number -> what its error must say (the fixture's bad lines, in order).
BAD = {
    2: "NaN is not a JSON number",
    3: "Infinity is not a JSON number",
    4: "field 'rating': inf is not a finite number",  # 1e400 parses as inf
    5: "text: a lone surrogate escape",
    6: "not valid UTF-8 (byte 0xff",
    7: "field 'count': 1180591620717411303424 is outside the 64-bit integer range",
    8: "field 'published': '3000-01-01' is outside 1677-09-22 to 2262-04-11",
    9: "nested too deeply",
    10: "not valid JSON",
    11: "expected a JSON object, got list",
    12: "no _id field",
    13: "duplicate _id 'ok-solar'",
}
GOOD = ["ok-solar", "nul-bytes", "rtl-override", "prompt-injection", "paired-surrogate", "ok-wind", "big-2mb"]


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, Path]:
    """The fixture corpus plus a 2 MB document, and its config, in a temporary folder."""
    corpus = tmp_path / "hostile.jsonl"
    shutil.copy(FIXTURE / "corpus.jsonl", corpus)
    big = {"_id": "big-2mb", "title": "A very long document", "text": ("filler words repeated " * 95_000) + BIG_WORD}
    assert len(big["text"]) > 2_000_000
    with open(corpus, "ab") as fh:
        fh.write(json.dumps(big).encode() + b"\n")
    return corpus, FIXTURE / "hostile.yaml"


@pytest.fixture
def env(cli_env):
    return cli_env


def test_every_bad_line_is_file_line_reason(hostile):
    corpus, cfg_file = hostile
    cfg = load_config_file(cfg_file)
    raw = corpus.read_bytes().split(b"\n")
    for n, reason in BAD.items():
        one = corpus.with_name(f"line{n}.jsonl")
        one.write_bytes(raw[0] + b"\n" + raw[n - 1] + b"\n" if n == 13 else raw[n - 1] + b"\n")
        line = 2 if n == 13 else 1
        with pytest.raises(CorpusError) as e:
            for ln, rec in iter_corpus(one):  # parse errors raise here, field errors in typed_fields
                typed_fields(rec, ln, cfg, str(one), LoadStats(), skip_bad=False)
        assert e.value.line == line and e.value.path == str(one), (n, str(e.value))
        assert reason in e.value.reason, (n, e.value.reason)
        assert "--skip-bad-lines" in e.value.reason


def test_cascade_index_stops_at_the_first_bad_line_without_a_traceback(env, hostile):
    corpus, cfg_file = hostile
    r = CliRunner().invoke(app, ["index", "--corpus", str(corpus), "--index", "hostile", "--config", str(cfg_file)])
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), r.output
    assert f"{corpus}:2: NaN is not a JSON number" in " ".join(r.output.split())
    assert "Traceback" not in r.output
    assert not (env / "idx" / "hostile").exists()  # nothing half-built


def test_skip_bad_lines_counts_each_once_and_the_manifest_agrees(env, hostile):
    corpus, cfg_file = hostile
    r = CliRunner().invoke(app, ["index", "--corpus", str(corpus), "--index", "hostile", "--config", str(cfg_file),
                                 "--skip-bad-lines"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"indexed {len(GOOD)} documents" in out and f"skipped {len(BAD)} bad lines" in out
    assert "skipped line 2: NaN is not a JSON number" in out  # the first few reasons are shown
    manifest = json.loads((env / "idx" / "hostile" / "manifest.json").read_text())
    assert manifest["docs"] == len(GOOD) and manifest["skipped"] == len(BAD)


def test_reasons_quoting_corpus_text_are_printed_as_text(env, hostile, tmp_path):
    """Regression (review): a reason echoing a value like "[/x]" was read as rich markup and crashed the CLI."""
    _, cfg_file = hostile
    corpus = tmp_path / "markup.jsonl"
    corpus.write_text('{"_id":"a","text":"fine","metadata":{"count":"[/x] [bold]"}}\n'
                      '{"_id":"b","text":"also fine"}\n')
    args = ["index", "--corpus", str(corpus), "--index", "hostile", "--config", str(cfg_file)]
    r = CliRunner().invoke(app, args + ["--skip-bad-lines"])
    assert r.exit_code == 0 and "'[/x] [bold]'" in r.output, r.output
    r = CliRunner().invoke(app, args + ["--rebuild"])
    assert r.exit_code == 2 and "'[/x] [bold]'" in r.output and "Traceback" not in r.output


def test_a_truncated_gzip_corpus_is_named_not_aborted(env, hostile, tmp_path):
    import gzip

    corpus, cfg_file = hostile
    whole = gzip.compress(corpus.read_bytes())
    broken = tmp_path / "cut.jsonl.gz"
    broken.write_bytes(whole[: len(whole) // 2])
    r = CliRunner().invoke(app, ["index", "--corpus", str(broken), "--index", "hostile", "--config", str(cfg_file)])
    assert r.exit_code == 2 and "cannot be read to its end" in " ".join(r.output.split()), r.output


@pytest.fixture
def hostile_index(env, hostile):
    corpus, cfg_file = hostile
    r = CliRunner().invoke(app, ["index", "--corpus", str(corpus), "--index", "hostile", "--config", str(cfg_file),
                                 "--skip-bad-lines"])
    assert r.exit_code == 0, r.output
    cfg = load_config_file(cfg_file)
    return cfg, Settings(index_dir=env / "idx", config_dir=env / "configs", cache_dir=env / "cache")


def _ids(cascade, **query) -> dict[str, list[str]]:
    """Each retriever's ids and the fused ids, so BM25 (tantivy) and kNN (stored columns) are checked apart."""
    q = cascade.validate(Query(size=20, **query))
    got = asyncio.run(cascade.retrieve(q))
    res = asyncio.run(cascade.search(q, validated=True, retrieved=got))
    assert not res.degraded, res.degraded
    return {**{n: sorted(h.id for h in hits) for n, hits in got.hits.items()}, "fused": sorted(res.candidates.ids)}


def test_non_finite_numbers_never_reach_filters_on_either_path(hostile_index):
    cfg, settings = hostile_index
    c = open_cascade(cfg, settings)
    nothing = {"bm25": [], "knn": [], "fused": []}
    assert _ids(c, text="solar", filters={"rating": {"gte": 1e300}}) == nothing
    assert _ids(c, text="solar power", filters={"rating": {"gt": 5}}) == nothing
    rated = _ids(c, text="solar power wind", filters={"rating": {"gt": -1e300}})
    assert rated["bm25"] == rated["knn"] == rated["fused"] == ["ok-solar", "ok-wind"]
    # Bounds beyond what a field can hold match what its edge matches instead of failing the retriever.
    assert _ids(c, text="solar", filters={"count": {"lt": 2**70}})["fused"] == ["ok-solar", "ok-wind"]
    assert _ids(c, text="solar", filters={"published": {"gte": "3000-01-01"}}) == nothing
    assert _ids(c, text="solar", filters={"published": {"lt": 1e300}})["fused"] == ["ok-solar", "ok-wind"]
    for bad, msg in (({"rating": float("nan")}, "finite"), ({"rating": {"lt": float("inf")}}, "finite"),
                     ({"count": "3"}, "without quotes"), ({"count": 2**70}, "64-bit"),
                     ({"published": "3000-01-01"}, "1677-09-22")):
        with pytest.raises(QueryError, match=msg):
            c.validate(Query(text="solar", filters=bad))


def test_hostile_valid_text_is_indexed_found_and_returned_as_written(hostile_index):
    cfg, settings = hostile_index
    c = open_cascade(cfg, settings)
    source = {json.loads(line)["_id"]: json.loads(line) for line in (FIXTURE / "corpus.jsonl").read_text(
        encoding="utf-8", errors="replace").splitlines()[13:]}
    res = asyncio.run(c.search(Query(text="wind power", size=10)))
    ids = res.candidates.ids
    for doc_id in ("nul-bytes", "rtl-override", "prompt-injection", "ok-wind"):
        assert doc_id in ids
    fields = asyncio.run(c.documents.fetch(["nul-bytes", "rtl-override", "paired-surrogate"]))
    for doc_id, f in zip(["nul-bytes", "rtl-override", "paired-surrogate"], fields):
        assert f["title"] == source[doc_id]["title"] and f["text"] == source[doc_id]["text"]
    assert "\u202e" in fields[1]["title"] and "\x00" in fields[0]["title"] and "\U0001F600" in fields[2]["title"]
    # The prompt injection is just a document: it ranks by its words, not by its instructions.
    top = asyncio.run(c.search(Query(text="solar power rooftop panels", size=3))).candidates.ids
    assert top[0] == "ok-solar"
    big = asyncio.run(c.search(Query(text=BIG_WORD, size=3))).candidates.ids
    assert big[0] == "big-2mb"


def test_the_service_answers_hostile_documents_as_valid_json(hostile_index, tmp_path):
    from fastapi.testclient import TestClient

    from cascade.service import create_app
    from cascade.service.registry import ConfigSource

    cfg, settings = hostile_index
    folder = tmp_path / "svc-configs"
    folder.mkdir()
    shutil.copy(FIXTURE / "hostile.yaml", folder / "hostile.yaml")
    app = create_app(settings.model_copy(update={"config_dir": folder}), ConfigSource(directory=folder))
    with TestClient(app) as client:
        for _ in range(600):
            if client.get("/readyz").json()["status"] != "loading":
                break
            asyncio.run(asyncio.sleep(0.05))
        r = client.post("/v1/indexes/hostile/search", json={"query": "wind power", "size": 10})
        assert r.status_code == 200, r.text
        hits = {h["id"]: h for h in json.loads(r.content.decode("utf-8"))["hits"]}
        assert hits["rtl-override"]["fields"]["title"].startswith("\u202eRTL")
        assert hits["nul-bytes"]["fields"]["title"] == "Null\u0000bytes"
        r = client.post("/v1/indexes/hostile/search", json={"query": "solar", "filters": {"rating": {"gte": 1e300}}})
        assert r.status_code == 200 and r.json()["hits"] == []
        r = client.post("/v1/indexes/hostile/search", json={"query": "solar", "filters": {"count": "3"}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "filters.count"
        r = client.post("/v1/indexes/hostile/search", content=b'{"query":"solar","filters":{"rating":NaN}}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "filters.rating", r.text


def test_opensearch_load_skips_and_counts_the_same_lines(hostile, tmp_path):
    """The same typing rules on the OpenSearch path (osmem: a real HTTP server speaking the bulk API)."""
    osmem_server = pytest.importorskip("osmem_server", reason="osmem-server is not installed")
    from cascade.config import parse_config
    from connectors.opensearch.admin import load_corpus

    corpus, cfg_file = hostile
    server = osmem_server.OsmemServer.start(freeze=False, japanese=False)
    try:
        data = json.loads(json.dumps(load_config_file(cfg_file).model_dump(mode="json")))
        data["backend"] = {"type": "opensearch", "hosts": [server.url], "timeout_s": 10, "retry_backoff_s": 0.01}
        data["retrievers"] = {"bm25": {"type": "bm25", "k": 10}}
        cfg = parse_config(data, "hostile.yaml")
        settings = Settings(index_dir=tmp_path / "idx", config_dir=tmp_path / "c", cache_dir=tmp_path / "cache")
        stats = LoadStats()
        rep = asyncio.run(load_corpus(cfg, iter_corpus(corpus, skip_bad=True, stats=stats), settings,
                                      source=str(corpus), skip_bad=True, stats=stats))
        assert rep.skipped == stats.skipped == len(BAD)
        assert rep.docs == rep.count == len(GOOD) and not rep.failed
        with pytest.raises(CorpusError, match=":2: NaN"):
            asyncio.run(load_corpus(cfg, iter_corpus(corpus), settings, source=str(corpus), rebuild=True))
    finally:
        server.close()
