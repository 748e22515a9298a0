"""The OpenSearch connector over real HTTP against osmem-server (an in-memory OpenSearch-compatible server).

osmem's BM25 is not Lucene's, so these tests check membership, filtering and
orders that any BM25 gives (a term only one document holds), never ``_score``
values. osmem answers ``unsupported_operation_exception`` for ``knn``,
``neural`` and ``hybrid``; tests that need them skip with that reason (the live
suite, tests/test_opensearch_live.py, runs them on a real cluster). Faults
(429, 503) come from a small forwarding proxy in front of osmem, since no
healthy server answers them on demand.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice

import pytest

from cascade.controller import Cascade
from cascade.builder import open_cascade
from cascade.errors import BackendError, CorpusError
from cascade.query import Query, validate_query
from tests.conftest import TINY_CONFIG, TINY_DOCS

osmem_server = pytest.importorskip("osmem_server", reason="osmem-server is not installed (pip install -e '.[dev]')")
pytest.importorskip("opensearchpy", reason="opensearch-py is not installed")

from connectors.opensearch import OpenSearchBackend  # noqa: E402
from connectors.opensearch.admin import LoadReport, load_corpus, load_records  # noqa: E402
from connectors.opensearch.client import Cluster  # noqa: E402
from cascade.config import parse_config  # noqa: E402

pytestmark = pytest.mark.opensearch
UNSUPPORTED = "unsupported_operation_exception"


@pytest.fixture(scope="session")
def osmem():
    server = osmem_server.OsmemServer.start(freeze=False, japanese=False)
    yield server
    server.close()


@pytest.fixture
def os_url(osmem):
    """A fresh clone of the (empty) base cluster for each test, on its own port."""
    clone = osmem.clone()
    yield clone.url
    clone.close()


def config(url, *, knn=False, index="tiny", **backend):
    data = json.loads(json.dumps(TINY_CONFIG))
    data["index"] = index
    data["backend"] = {"type": "opensearch", "hosts": [url], "timeout_s": 5, "retry_backoff_s": 0.01, **backend}
    data["retrievers"] = {"bm25": {"type": "bm25", "k": 10}, **({"knn": {"type": "knn", "k": 10}} if knn else {})}
    return parse_config(data, f"{index}.yaml")


def load(cfg, settings, docs=TINY_DOCS, **kw) -> LoadReport:
    return asyncio.run(load_corpus(cfg, ((i + 1, dict(d)) for i, d in enumerate(docs)), settings, source="t", **kw))


def validated(cfg, text, **kw):
    return validate_query(Query(text, **kw), {n: f.type for n, f in cfg.fields.items()}, 100, 1000)


def http(url, method="GET", body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


class Proxy:
    """Forwards to a server, logging requests; answers the first queued statuses itself (fault injection)."""

    def __init__(self, target: str, fail=()):
        self.target, self.fail, self.log = target, list(fail), []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                proxy.log.append((self.command, self.path.split("?")[0]))
                if proxy.fail:
                    status = proxy.fail.pop(0)
                    kind = "es_rejected_execution_exception" if status == 429 else "node_not_connected_exception"
                    data = json.dumps({"error": {"root_cause": [{"type": kind, "reason": "injected by the test proxy"}],
                                                 "type": kind, "reason": "injected by the test proxy"},
                                       "status": status}).encode()
                    ctype = "application/json"
                else:
                    req = urllib.request.Request(proxy.target + self.path, data=body, method=self.command,
                                                 headers={"Content-Type": self.headers.get("Content-Type") or "application/json"})
                    try:
                        with urllib.request.urlopen(req, timeout=10) as r:
                            status, data, ctype = r.status, r.read(), r.headers.get("Content-Type")
                    except urllib.error.HTTPError as e:
                        status, data, ctype = e.code, e.read(), e.headers.get("Content-Type")
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_one

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy_for(os_url):
    made = []

    def make(fail=()):
        p = Proxy(os_url, fail)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# ---------------------------------------------------------------- index management

def test_create_index_mapping_and_bulk(os_url, settings):
    cfg = config(os_url, knn=True, field_map={"journal": "meta.journal"})
    rep = load(cfg, settings)
    assert (rep.docs, rep.failed, rep.count, rep.existed) == (6, [], 6, False)
    props = http(f"{os_url}/tiny/_mapping")["tiny"]["mappings"]["properties"]
    assert props["title"]["analyzer"] == "english" and props["meta"]["properties"]["journal"]["type"] == "keyword"
    assert props["embedding"]["type"] == "knn_vector" and props["embedding"]["dimension"] == 384
    assert props["embedding"]["method"]["space_type"] == "cosinesimil"
    doc = http(f"{os_url}/tiny/_doc/d5")["_source"]
    assert doc["meta"]["journal"] == ["Energy", "Chemistry"] and len(doc["embedding"]) == 384
    again = load(cfg, settings)  # an existing index is left alone unless rebuild
    assert again.existed and again.count == 6


def test_bulk_reports_refused_documents_by_id(os_url, settings):
    cfg = config(os_url)
    # An index made by hand whose journal field cannot hold the corpus's strings.
    http(f"{os_url}/tiny", "PUT", {"mappings": {"properties": {"journal": {"type": "integer"}}}})
    rep = LoadReport("tiny")
    asyncio.run(load_records(Cluster(cfg.backend, "tiny.yaml"), cfg, "tiny",
                             ((i + 1, dict(d)) for i, d in enumerate(TINY_DOCS)), None, source="t", report=rep))
    assert sorted(f.id for f in rep.failed) == ["d1", "d2", "d3", "d4", "d5", "d6"]
    assert all(f.status == 400 and f.type == "mapper_parsing_exception" and "journal" in f.reason for f in rep.failed)
    assert rep.docs == 0


def test_bad_corpus_record_stops_with_its_line(os_url, settings):
    docs = [dict(d) for d in TINY_DOCS]
    docs[1] = {**docs[1], "metadata": {"year": "soon"}}
    with pytest.raises(CorpusError) as e:
        load(config(os_url), settings, docs)
    assert e.value.line == 2 and "year" in e.value.reason
    assert load(config(os_url), settings, docs, skip_bad=True, rebuild=True).skipped == 1


# ---------------------------------------------------------------- search

def test_lexical_search_through_the_cascade(os_url, settings):
    cfg = config(os_url)
    load(cfg, settings)
    c = open_cascade(cfg, settings)
    res = asyncio.run(c.search(Query("the solar panels", size=5)))
    ids = [h["id"] for h in res.hits()]
    assert ids[0] == "d1" and set(ids) == {"d1", "d2", "d5"}  # d1 alone has "panels"; "the" is a stop word
    assert res.hits()[0]["fields"]["title"] == "Solar panels on rooftops"  # from _source, no second fetch
    assert [t.name for t in res.traces] == ["bm25", "fusion"] and not res.degraded


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"journal": "Energy"}, {"d1", "d2", "d5"}),
        ({"journal": "Chemistry"}, {"d5"}),
        ({"journal": ["Biology", "Chemistry"]}, {"d3", "d4", "d5", "d6"}),
        ({"year": {"gte": 2019, "lt": 2021}}, {"d1", "d5"}),
        ({"year": 2015}, {"d3"}),
        ({"published": {"gte": "2020-01-01", "lte": "2021-12-31"}}, {"d2", "d5"}),
        ({"cites": {"gte": 10}}, {"d1", "d3"}),
        ({"journal": "Energy", "year": {"lte": 2020}}, {"d1", "d5"}),
        ({"journal": "Nope"}, set()),
    ],
)
def test_filters_match_the_embedded_backend(os_url, settings, filters, expected):
    cfg = config(os_url)
    load(cfg, settings)
    b = OpenSearchBackend(cfg, settings)
    q = validated(cfg, "solar wind electricity cells protein fish", filters=filters)
    got = asyncio.run(b.retrieve_many(q, {"bm25": 10}))["bm25"]
    assert {h.id for h in got} == expected


def test_one_msearch_per_query_and_a_failed_item_degrades_only_its_retriever(proxy_for, settings):
    proxy = proxy_for()
    cfg = config(proxy.url, knn=True)
    load(cfg, settings)
    c = open_cascade(cfg, settings)
    proxy.log.clear()
    res = asyncio.run(c.search(Query("solar panels", size=3)))
    assert proxy.log == [("POST", "/_msearch")]
    knn = res.traces[1]
    if knn.error is None:  # a server that does kNN: both answered
        assert knn.n_out > 0
        return
    assert UNSUPPORTED in knn.error and res.degraded == ["knn"]
    assert [h["id"] for h in res.hits()][0] == "d1"  # bm25 still ranked


def test_knn_search(os_url, settings):
    cfg = config(os_url, knn=True)
    load(cfg, settings)
    b = OpenSearchBackend(cfg, settings)
    try:
        got = asyncio.run(b.retriever("knn", cfg.retrievers["knn"]).retrieve(validated(cfg, "marine animals glowing"), 3))
    except BackendError as exc:
        if UNSUPPORTED in str(exc):
            pytest.skip(f"osmem answers {exc}")
        raise
    assert got[0].id == "d6"


def test_hybrid_search(os_url, settings):
    cfg = config(os_url, knn=True, hybrid_pipeline="cascade-hybrid")
    load(cfg, settings)
    pipeline = {"phase_results_processors": [{"normalization-processor": {
        "normalization": {"technique": "min_max"}, "combination": {"technique": "arithmetic_mean"}}}]}
    try:
        http(f"{os_url}/_search/pipeline/cascade-hybrid", "PUT", pipeline)
    except urllib.error.HTTPError as exc:
        pytest.skip(f"osmem cannot create a search pipeline ({exc.code}: {exc.read().decode()[:120]}); "
                    "the hybrid query needs one")
    b = OpenSearchBackend(cfg, settings)
    try:
        got = asyncio.run(b.retrieve_many(validated(cfg, "solar power storage"), {"bm25": 5, "knn": 5}))
    except BackendError as exc:
        if UNSUPPORTED in str(exc) or "search_pipeline" in str(exc):
            pytest.skip(f"osmem answers {exc}")
        raise
    assert got["bm25"] == got["knn"] and got["bm25"]


def test_fetch_returns_fields_in_order(os_url, settings):
    cfg = config(os_url)
    load(cfg, settings)
    b = OpenSearchBackend(cfg, settings)
    got = asyncio.run(b.fetch(["d3", "nope", "d5"]))
    assert got[0]["title"] == "Protein folding" and got[1] is None and got[2]["journal"] == ["Energy", "Chemistry"]
    assert "embedding" not in got[0]


def test_field_stats(os_url, settings):
    cfg = config(os_url)
    load(cfg, settings)
    now = [0.0]
    b = OpenSearchBackend(cfg, settings, clock=lambda: now[0])
    try:
        st = asyncio.run(b.field_stats("text", ["electricity", "solar"]))
    except BackendError as exc:
        if "no handler" in str(exc):
            pytest.skip(f"osmem has no artificial-document _termvectors: {exc}")
        raise
    assert st.doc_freq["electr"] == 3 and st.total_docs == 6


# ---------------------------------------------------------------- a real collection

def test_lexical_search_on_med(os_url, settings, data_dir):
    from cascade.datasets import iter_corpus

    records = list(islice(iter_corpus(data_dir / "med" / "corpus.jsonl"), 300))
    data = json.loads(json.dumps(TINY_CONFIG))
    data.update(index="med", fields={"title": {"type": "text", "analyzer": "standard"},
                                     "text": {"type": "text", "analyzer": "standard"}},
                retrievers={"bm25": {"type": "bm25", "k": 50}},
                backend={"type": "opensearch", "hosts": [os_url], "timeout_s": 10})
    cfg = parse_config(data, "med.yaml")  # standard analyzer: tokens are lowercased words, so df is countable here
    rep = asyncio.run(load_corpus(cfg, iter(records), settings, source="med", batch_size=128))
    assert rep.docs == 300 and rep.count == 300 and not rep.failed
    # Words that exactly one of these documents holds, and words several hold: checkable without scores.
    words = [set(re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", f"{r['title']} {r['text']}".lower())) for _, r in records]
    df = Counter(w for ws in words for w in ws)
    unique = [(w, records[i][1]["_id"]) for i, ws in enumerate(words) for w in sorted(ws)
              if df[w] == 1 and w.isalpha() and len(w) >= 9][:5]
    b = OpenSearchBackend(cfg, settings)
    for word, doc_id in unique:
        got = asyncio.run(b.retrieve_many(validated(cfg, word), {"bm25": 10}))["bm25"]
        assert [h.id for h in got] == [doc_id], word
    common = next(w for w, n in df.most_common() if 5 <= n <= 10 and w.isalpha() and len(w) >= 6)
    holders = {records[i][1]["_id"] for i, ws in enumerate(words) if common in ws}
    got = asyncio.run(b.retrieve_many(validated(cfg, common), {"bm25": 50}))["bm25"]
    assert holders <= {h.id for h in got}


# ---------------------------------------------------------------- faults

def test_missing_index_names_it(os_url, settings):
    with pytest.raises(BackendError, match=r"index 'nope' does not exist") as e:
        OpenSearchBackend(config(os_url, index="nope"), settings)
    assert e.value.status == 404 and os_url.split("//")[1] in str(e.value)


def test_a_query_the_cluster_rejects_passes_its_reason_on(os_url, settings):
    cfg = config(os_url)
    load(cfg, settings)
    # A date filter aimed (by a wrong field_map) at a numeric field: the cluster, not cascade, refuses it.
    wrong = config(os_url, field_map={"published": "year"})
    b = OpenSearchBackend(wrong, settings, check=False)
    with pytest.raises(BackendError) as e:
        asyncio.run(b.retrieve_many(validated(wrong, "solar", filters={"published": {"gte": "2020-01-01"}}),
                                    {"bm25": 10}))
    assert e.value.status == 400 and "2020-01-01T00:00:00Z" in str(e.value)


def test_start_up_names_missing_fields(os_url, settings):
    http(f"{os_url}/tiny", "PUT", {"mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}})
    with pytest.raises(BackendError) as e:
        OpenSearchBackend(config(os_url), settings)
    assert "lacks fields" in str(e.value) and all(f in str(e.value) for f in ("journal", "year", "published", "cites"))


def test_start_up_checks_the_vector_dimension(os_url, settings):
    cfg = config(os_url, knn=True)
    from connectors.opensearch.mapping import index_body

    http(f"{os_url}/tiny", "PUT", index_body(cfg, cfg.backend, 8))
    with pytest.raises(BackendError) as e:
        OpenSearchBackend(cfg, settings)
    assert "8-d" in str(e.value) and "384-d" in str(e.value)


def test_retries_429_and_503_with_backoff(proxy_for, settings):
    proxy = proxy_for()
    cfg = config(proxy.url)
    load(cfg, settings)
    b = OpenSearchBackend(cfg, settings)
    proxy.fail += [429, 503]
    proxy.log.clear()
    got = asyncio.run(b.retrieve_many(validated(cfg, "solar panels"), {"bm25": 5}))["bm25"]
    assert got[0].id == "d1" and proxy.log == [("POST", "/_msearch")] * 3
    proxy.fail += [429, 429]
    tight = OpenSearchBackend(config(proxy.url, max_retries=1), settings, check=False)
    with pytest.raises(BackendError, match="429") as e:
        asyncio.run(tight.retrieve_many(validated(cfg, "solar"), {"bm25": 5}))
    assert e.value.status == 429 and "es_rejected_execution_exception" in str(e.value)


def _unused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_host_fails_fast_naming_host_and_timeout(settings):
    url = f"http://127.0.0.1:{_unused_port()}"
    t = time.monotonic()
    with pytest.raises(BackendError) as e:
        OpenSearchBackend(config(url, timeout_s=2), settings)
    assert time.monotonic() - t < 2.5
    assert url in str(e.value) and "timeout 2 s" in str(e.value)


def test_silent_host_times_out_within_the_timeout(settings):
    listener = socket.socket()  # accepts connections (the kernel's backlog) but never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        t = time.monotonic()
        with pytest.raises(BackendError) as e:
            OpenSearchBackend(config(url, timeout_s=1), settings)
        took = time.monotonic() - t
    finally:
        listener.close()
    assert 0.9 < took < 2.0
    assert url in str(e.value) and "within the 1 s timeout" in str(e.value)


# ---------------------------------------------------------------- command line

def test_cli_index_backend_opensearch(os_url, settings, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import cascade.settings
    from cascade.cli import app
    from cascade.config import dump_config
    from tests.conftest import write_corpus

    cfg = config(os_url)
    (tmp_path / "tiny.yaml").write_text(dump_config(cfg))
    corpus = write_corpus(tmp_path / "tiny.jsonl")
    monkeypatch.setenv("CASCADE_CONFIG_DIR", str(tmp_path))
    cascade.settings.get_settings.cache_clear()
    try:
        runner = CliRunner()
        res = runner.invoke(app, ["index", "--corpus", str(corpus), "--index", "tiny", "--backend", "opensearch"])
        assert res.exit_code == 0, res.output
        assert http(f"{os_url}/tiny/_count")["count"] == 6
        res = runner.invoke(app, ["search", "--index", "tiny", "--json", "solar panels"])
        assert res.exit_code == 0 and json.loads(res.stdout)["hits"][0]["id"] == "d1"
        res = runner.invoke(app, ["index", "--corpus", str(corpus), "--index", "tiny", "--backend", "embedded"])
        assert res.exit_code == 2 and "backend.type: opensearch" in res.output
    finally:
        cascade.settings.get_settings.cache_clear()


# ---------------------------------------------------------------- a deployment without the heavy extras

NO_TORCH = r'''
import importlib.abc, json, sys
BLOCKED = ("torch", "sentence_transformers", "transformers", "faiss", "lightgbm", "onnxruntime")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (blocked by the test)")
        return None

sys.meta_path.insert(0, Block())
import asyncio
from cascade.builder import open_cascade
from cascade.config import parse_config
from cascade.query import Query
from cascade.settings import Settings

cfg = parse_config(json.loads(sys.argv[1]), "tiny.yaml")
casc = open_cascade(cfg, Settings(index_dir=sys.argv[2]))
res = asyncio.run(casc.search(Query("solar electricity storage", size=3)))
print(json.dumps({"ids": res.candidates.ids[:3], "degraded": res.degraded, "cost": res.cost(),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
'''


def test_opensearch_with_a_remote_reranker_needs_no_torch(os_url, settings, tmp_path):
    """The core install serves an OpenSearch index re-ranked by a rerank API: torch, faiss, LightGBM and ONNX
    Runtime are extras it never imports (here they are made unimportable in a fresh interpreter)."""
    import subprocess
    import sys

    from tests.test_rerankers import RerankServer

    cfg = config(os_url)
    load(cfg, settings)
    tei = RerankServer("tei")
    try:
        data = json.loads(cfg.model_dump_json())
        data["stages"] = [{"type": "cross_encoder", "backend": "tei", "model": "tei-model", "url": tei.url,
                           "rerank": 5}]
        out = subprocess.run([sys.executable, "-c", NO_TORCH, json.dumps(data), str(tmp_path)], capture_output=True,
                             text=True, timeout=120, cwd=str(tmp_path), env={**__import__("os").environ})
        assert out.returncode == 0, out.stderr[-2000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["degraded"] == [] and 0 < got["cost"]["pairs"] <= 5 and len(got["ids"]) == 3
        assert got["loaded"] == [] and len(tei.requests) == 1
    finally:
        tei.close()
