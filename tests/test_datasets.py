import gzip
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import pytest

from cascade.datasets import (LoadStats, corpus_file, download_beir, iter_corpus, load_qrels, load_queries,
                              locate_dataset)
from cascade.errors import CorpusError, DatasetError
from cascade.settings import Settings


def lines(*objs_or_raw):
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs_or_raw)


def test_reads_jsonl_and_gz(tmp_path):
    body = lines({"_id": "a", "title": "T", "text": "x"}, {"_id": 7, "text": "y"})
    (tmp_path / "c.jsonl").write_text(body)
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as fh:
        fh.write(body)
    for name in ("c.jsonl", "c.jsonl.gz"):
        recs = list(iter_corpus(tmp_path / name))
        assert [(n, r["_id"]) for n, r in recs] == [(1, "a"), (2, "7")]


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("{not json", "not valid JSON"),
        ('{"title": "no id"}', "no _id"),
        ('["a", "list"]', "expected a JSON object"),
        ('{"_id": ""}', "_id must be a non-empty"),
        ('{"_id": "a"}', "duplicate _id 'a'"),
    ],
)
def test_bad_line_is_reported_by_number(tmp_path, bad, reason):
    p = tmp_path / "c.jsonl"
    p.write_text(lines({"_id": "a"}, "", bad, {"_id": "z"}))
    with pytest.raises(CorpusError) as e:
        list(iter_corpus(p))
    assert e.value.line == 3 and reason in e.value.reason and "--skip-bad-lines" in str(e.value)
    assert str(e.value).startswith(f"{p}:3:")


def test_skip_bad_lines_counts_them(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(lines({"_id": "a"}, "{oops", {"nope": 1}, {"_id": "b"}))
    stats = LoadStats()
    assert [r["_id"] for _, r in iter_corpus(p, skip_bad=True, stats=stats)] == ["a", "b"]
    assert stats.read == 2 and stats.skipped == 2 and stats.errors[0].startswith("line 2:")


def make_dataset(root: Path, name="mini") -> Path:
    d = root / name
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text(lines({"_id": "d1", "title": "", "text": "hello"}))
    (d / "queries.jsonl").write_text(lines({"_id": "q1", "text": "hi"}, {"_id": 2, "text": "yo"}))
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\n2\td1\t0\n")
    return d


def test_queries_and_qrels(tmp_path):
    d = make_dataset(tmp_path)
    assert load_queries(d) == {"q1": "hi", "2": "yo"}
    assert load_qrels(d, "test") == {"q1": {"d1": 2}, "2": {"d1": 0}}
    with pytest.raises(DatasetError, match="splits here: test"):
        load_qrels(d, "train")
    (d / "qrels" / "bad.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tvery\n")
    with pytest.raises(DatasetError, match=r"bad.tsv:2: score 'very'"):
        load_qrels(d, "bad")


def test_real_shared_datasets_load(data_dir):
    for name, docs, queries, qrels_n in [("scifact", 5183, 1109, 339), ("med", 1033, 30, 696)]:
        d = data_dir / name
        stats = LoadStats()
        assert sum(1 for _ in iter_corpus(corpus_file(d), stats=stats)) == docs and stats.skipped == 0
        assert len(load_queries(d)) == queries
        assert sum(len(v) for v in load_qrels(d, "test").values()) == qrels_n


def test_locate_prefers_data_dir_and_explains_missing(tmp_path):
    make_dataset(tmp_path / "data")
    s = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert locate_dataset("mini", s) == tmp_path / "data" / "mini"
    with pytest.raises(DatasetError, match="available there: mini"):
        locate_dataset("unknown-set", s)


class _ZipHandler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):  # noqa: N802
        if self.path.endswith("/mini.zip"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            self.wfile.write(self.payload)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def zip_server(tmp_path):
    src = make_dataset(tmp_path / "src")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in src.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(src.parent))
    _ZipHandler.payload = buf.getvalue()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ZipHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/beir"
    srv.shutdown()


def test_download_beir_archive_over_http(tmp_path, zip_server):
    s = Settings(data_dir=None, cache_dir=tmp_path / "cache", beir_url=zip_server)
    seen = []
    d = download_beir("mini", s, progress=lambda done, total: seen.append((done, total)))
    assert d == tmp_path / "cache" / "datasets" / "mini"
    assert load_queries(d)["q1"] == "hi" and seen[-1][0] == seen[-1][1] > 0
    assert locate_dataset("mini", s, download=False) == d  # cached: no second download


def test_download_failure_says_what_to_do(tmp_path, zip_server):
    s = Settings(data_dir=None, cache_dir=tmp_path / "cache", beir_url=zip_server)
    with pytest.raises(DatasetError, match="set CASCADE_DATA_DIR"):
        download_beir("absent", s)
    assert not any((tmp_path / "cache" / "datasets").iterdir())  # nothing half-written
