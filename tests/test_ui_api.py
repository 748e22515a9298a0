"""The workbench's endpoints over HTTP against a real service and a real SciFact index, and what they keep.

Every ranking is checked against the service's own search (the workbench must show what search serves),
judgments are read back from the files ``cascade eval`` reads, and ``cascade eval`` itself runs on them.
"""

from __future__ import annotations

import json
import os
import random

import httpx
import ir_measures
import pytest
from ir_measures import nDCG

from cascade.datasets import load_qrels, load_queries, locate_dataset
from cascade.service import create_app
from cascade.service.registry import ConfigSource
from cascade.settings import Settings
from cascade.ui.evals import load_last_evals, save_last_eval
from cascade.ui.judgments import JudgmentError, JudgmentStore, Judged, parse_import
from cascade.ui.overlap import jaccard_at, ndcg_at_10, overlap_at, rbo
from tests.service_fixtures import ServerThread, wait_until
from tests.ui_fixtures import workbench_index  # noqa: F401  (session fixture)

# ---------------------------------------------------------------- list overlap


def _rbo_by_definition(a, b, p, k):
    """Eq. 32 of Webber et al. with X_d = |A[:d] ∩ B[:d]| computed from sets."""
    xs = [len(set(a[:d]) & set(b[:d])) for d in range(1, k + 1)]
    return xs[-1] / k * p ** k + (1 - p) / p * sum(x / d * p ** d for d, x in enumerate(xs, start=1))


def test_rbo_matches_its_definition_and_bounds():
    assert rbo(list("abcdef"), list("abcdef")) == pytest.approx(1.0)
    assert rbo(list("abc"), list("xyz")) == 0.0
    # a hand-computed value: X = 1, 1, 3 -> 0.1/0.9 * (0.9 + 0.405 + 0.729) + 0.729 = 0.955
    assert rbo(list("abc"), list("acb"), 0.9) == pytest.approx(0.955, abs=1e-9)
    rng = random.Random(3)
    for _ in range(50):
        docs = [f"d{i}" for i in range(30)]
        a, b = rng.sample(docs, 15), rng.sample(docs, 15)
        assert rbo(a, b, 0.9) == pytest.approx(_rbo_by_definition(a, b, 0.9, 15))
        assert rbo(a, b) == pytest.approx(rbo(b, a))
        assert 0.0 <= rbo(a, b) <= 1.0
    # agreement at the top weighs more than agreement further down
    assert rbo(list("abxyz"), list("abpqr")) > rbo(list("xyzab"), list("pqrab"))
    with pytest.raises(ValueError):
        rbo(["a"], ["a"], p=1.0)
    assert rbo([], []) == 1.0 and rbo([], ["a"]) == 0.0


# RBO_ext of lists of uneven length (eq. 32 in full), as the `rbo` package (0.1.3, RankingSimilarity.rbo_ext)
# computes them; that package cannot be a dependency (it pins numpy below 2), so its answers are written here.
UNEVEN = [
    ("a b c d e f g", "a b c", 0.9, 1.0),  # the short list is complete: a prefix of the long one agrees wholly
    ("a b c d e", "x y z a b", 0.9, 0.280665),
    ("a b c d e f g h i j", "j i h g f", 0.8, 0.12365290869841275),
    ("d12 d20 d1 d2 d17 d3 d11 d22", "d16 d6 d1 d2 d13", 0.9, 0.32589),
    ("d2 d17 d13 d1", "d18 d3 d7 d20 d21 d24", 0.8, 0.0),
    ("d21 d17 d13 d10 d14 d18", "d14 d11 d9 d7 d5 d21 d2 d22 d16 d15", 0.9, 0.209952),
]


@pytest.mark.parametrize("a, b, p, want", UNEVEN)
def test_rbo_of_uneven_lists_matches_the_reference_implementation(a, b, p, want):
    assert rbo(a.split(), b.split(), p) == pytest.approx(want, abs=1e-12)
    assert rbo(b.split(), a.split(), p) == pytest.approx(want, abs=1e-12)
    # ``depth`` cuts both lists first: the same as cutting them by hand
    assert rbo(a.split(), b.split(), p, depth=3) == pytest.approx(rbo(a.split()[:3], b.split()[:3], p))


def test_jaccard_overlap_and_ndcg():
    assert overlap_at(list("abcd"), list("dcxy"), 4) == 2
    assert jaccard_at(list("abcd"), list("dcxy"), 4) == pytest.approx(2 / 6)
    assert jaccard_at(list("ab"), list("ab"), 1) == 1.0
    labels = {"a": 1, "b": 0, "z": 2}
    expected = ir_measures.calc_aggregate([nDCG @ 10], {"q": labels}, {"q": {"b": 2.0, "a": 1.0}})[nDCG @ 10]
    assert ndcg_at_10(["b", "a"], labels) == pytest.approx(expected)
    assert ndcg_at_10(["z", "a"], {"z": 2, "a": 1}) == pytest.approx(1.0)
    assert ndcg_at_10(["a"], {"a": 0}) is None  # nothing relevant judged: no number to show


# ---------------------------------------------------------------- judgments and evals on disk


def test_judgment_store_is_a_dataset_folder(tmp_path):
    store = JudgmentStore(tmp_path / "judgments")
    dataset = Judged(queries={"7": "Statins and heart disease"}, qrels={"7": {"d1": 1}}, splits={"7": "test"})
    lab = store.put("idx", "statins  AND heart disease", "d2", 2, dataset)  # case and spacing: the same query
    assert lab.query_id == "7" and lab.labels == {"d1": 1, "d2": 2} and lab.sources == {"d1": "test", "d2": "ui"}
    lab = store.put("idx", "statins and heart disease", "d1", 0, dataset)  # the workbench's grade wins
    assert lab.labels["d1"] == 0 and lab.sources["d1"] == "ui"
    new = store.put("idx", "a query of our own", "d9", 3)
    assert new.query_id.startswith("ui-") and new.labels == {"d9": 3}
    folder = locate_dataset(str(tmp_path / "judgments" / "idx"), Settings())  # what `cascade eval --dataset` does
    assert load_qrels(folder, "ui") == {"7": {"d1": 0, "d2": 2}, new.query_id: {"d9": 3}}
    assert load_queries(folder)[new.query_id] == "a query of our own"
    store.put("idx", "a query of our own", "d9", None)
    assert new.query_id not in load_queries(folder)  # a query with no judgment left is dropped
    with pytest.raises(JudgmentError, match="grade"):
        store.put("idx", "q", "d1", 5)
    with pytest.raises(JudgmentError, match="doc_id"):
        store.put("idx", "q", "d\t1", 1)
    with pytest.raises(JudgmentError):
        store.folder("../etc")


def test_concurrent_judges_lose_no_judgment(tmp_path):
    """Two stores on one folder (two services, or a service and its restart) judging at once from many threads:
    every judgment is kept (the folder's lock orders the read-modify-writes), and no temporary file is left."""
    from concurrent.futures import ThreadPoolExecutor

    stores = [JudgmentStore(tmp_path), JudgmentStore(tmp_path)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: stores[i % 2].put("idx", f"query {i % 5}", f"d{i}", i % 4), range(40)))
    got = stores[0].load("idx")
    assert got.count == 40 and len(got.queries) == 5
    assert load_qrels(tmp_path / "idx", "ui") == got.qrels
    assert [p.name for p in (tmp_path / "idx").rglob(".*")] == [".lock"]
    mask = os.umask(0)
    os.umask(mask)
    mode = (tmp_path / "idx" / "qrels" / "ui.tsv").stat().st_mode & 0o777
    assert mode == 0o666 & ~mask  # as any file written here, not a temporary file's owner-only 0600


def test_export_import_round_trip_and_errors(tmp_path):
    store = JudgmentStore(tmp_path)
    store.put("idx", "first query", "d1", 2)
    store.put("idx", "second query", "d2", 1)
    exported = store.export("idx", "jsonl")
    other = JudgmentStore(tmp_path / "other")
    other.merge("idx", parse_import(exported, {}))
    assert other.load("idx").qrels == store.load("idx").qrels
    assert store.export("idx", "tsv").splitlines()[0] == "query-id\tcorpus-id\tscore"
    known = store.load("idx").queries
    qid = next(iter(known))
    rows = parse_import(f"query-id\tcorpus-id\tscore\n{qid}\td7\t1\n", known)
    assert rows[0].query_id == qid and rows[0].doc_id == "d7" and rows[0].grade == 1
    with pytest.raises(JudgmentError, match="line 2: query id 'nope'"):
        parse_import("query-id\tcorpus-id\tscore\nnope\td1\t1\n", known)
    with pytest.raises(JudgmentError, match="line 1: .*grade"):
        parse_import('{"query": "q", "doc_id": "d", "grade": 9}\n', {})
    with pytest.raises(JudgmentError, match="line 2: not valid JSON"):
        parse_import('{"query": "q", "doc_id": "d", "grade": 1}\n{oops\n', {})


def test_last_eval_is_kept_per_index_and_profile(tmp_path):
    class Rep:
        index, profile = "idx", "ce-deep"

        def as_json(self):
            return {"index": "idx", "profile": "ce-deep", "stages": [{"name": "bm25", "ndcg@10": 0.5}]}

    s = Settings(index_dir=tmp_path / "indexes")
    path = save_last_eval(Rep(), s, "cascade eval --dataset x")
    assert path == tmp_path / "evals" / "idx" / "ce-deep.json"  # beside the indexes by default
    got = load_last_evals("idx", s)
    assert got[0]["command"] == "cascade eval --dataset x" and got[0]["saved_at"].endswith("Z")
    assert load_last_evals("other", s) == [] and load_last_evals("../x", s) == []


# ---------------------------------------------------------------- the endpoints, over HTTP


@pytest.fixture(scope="module")
def service(workbench_index, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("ui-api")
    s = workbench_index.settings(tmp)
    with ServerThread(create_app(s, ConfigSource(directory=workbench_index.config_dir)), s) as server:
        wait_until(lambda: httpx.get(server.url + "/readyz").json()["status"] == "ready", 180, what="/readyz")
        yield server, s, workbench_index


def _judged_query(wb):
    qid = next(iter(wb.qrels))
    return qid, wb.queries[qid], wb.qrels[qid]


def test_steps_show_every_step_as_search_runs_it(service):
    server, _, wb = service
    qid, text, rel = _judged_query(wb)
    r = httpx.post(f"{server.url}/v1/indexes/scifact/steps", json={"query": text, "depth": 15}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert [s["name"] for s in got["steps"]] == ["bm25", "knn", "fusion", "features", "ltr", "cross_encoder"]
    steps = {s["name"]: s for s in got["steps"]}
    assert not steps["features"]["ranked"] and steps["features"]["hits"] == []
    assert steps["ltr"]["previous"] == "fusion" and steps["cross_encoder"]["previous"] == "ltr"
    assert steps["cross_encoder"]["cost_unit"] == "pairs" and steps["cross_encoder"]["scored"] == 8
    assert steps["ltr"]["n_in"] == 60 and steps["ltr"]["n_out"] == 30
    docs = got["docs"]
    for s in got["steps"]:
        for hit in s["hits"]:
            doc = docs[hit["id"]]
            assert doc["steps"][s["name"]]["rank"] == hit["rank"]
            if s["previous"]:  # the move is counted from the previous ranking step's whole ranking
                before = doc["steps"].get(s["previous"])
                assert hit["previous_rank"] == (before["rank"] if before else None)
                assert hit["move"] == (before["rank"] - hit["rank"] if before else None)
                assert hit["new"] == (before is None or before["rank"] > 15)
        for d in s["dropped"]:  # left the listed top: in the previous top 15, not in this one
            assert docs[d["id"]]["steps"][s["previous"]]["rank"] == d["previous_rank"] <= 15
            assert d["rank"] is None or d["rank"] > 15
    ce = steps["cross_encoder"]["hits"]
    assert [h["scored"] for h in ce[:8]] == [True] * 8 and not any(h["scored"] for h in ce[8:])
    # provenance: each retriever's rank of every listed document, whether or not it survived
    for name in ("bm25", "knn"):
        for hit in steps[name]["hits"]:
            assert docs[hit["id"]]["retrievers"][name]["rank"] == hit["rank"]
    # features of documents the LTR stage dropped (why did it let them go?) as well as of the survivors
    cut = [d["id"] for d in steps["ltr"]["dropped"]]
    assert all(docs[d]["features"] and "kw.title.bm25" in docs[d]["features"] for d in cut + [ce[0]["id"]])
    # labels: the dataset's relevant documents of this query, by split
    assert got["judgments"]["query_id"] == qid and got["judgments"]["relevant"] == len(rel)
    shown = [d for d in rel if d in docs]
    assert shown and all(docs[d]["label"] == rel[d] and docs[d]["label_source"] == "test" for d in shown)
    # the last column is what search serves for the same profile (named: unnamed, the experiment would interleave)
    search = httpx.post(f"{server.url}/v1/indexes/scifact/search", json={"query": text, "size": 15, "profile": "default"},
                        timeout=60).json()
    assert [h["id"] for h in ce] == [h["id"] for h in search["hits"]]
    assert docs[ce[0]["id"]]["fields"]["title"] == search["hits"][0]["fields"]["title"]


def test_steps_errors_name_the_field(service):
    server, _, wb = service
    url = f"{server.url}/v1/indexes/scifact/steps"
    cases = [({"query": "x", "profile": "nope"}, 422, "profile"), ({"query": "x", "depth": 150}, 422, "depth"),
             ({"query": ""}, 422, "query"), ({"query": "x", "filters": {"year": 2000}}, 422, "filters.year"),
             ({"query": "x", "overrides": {"ltr": {"keep": 500}}}, 422, "overrides.ltr.keep"),
             ({"query": "x", "dpeth": 5}, 422, "dpeth")]
    for body, status, field in cases:
        r = httpx.post(url, json=body, timeout=30)
        assert (r.status_code, r.json()["error"]["field"]) == (status, field), (body, r.text)
    r = httpx.post(f"{server.url}/v1/indexes/nope/steps", json={"query": "x"})
    assert r.status_code == 404 and "scifact" in r.json()["error"]["message"]


def test_compare_two_profiles(service):
    server, _, wb = service
    qid, text, rel = _judged_query(wb)
    r = httpx.post(f"{server.url}/v1/indexes/scifact/compare",
                   json={"query": text, "a": "fusion", "b": "default", "k": 10, "depth": 20}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    a = [h["id"] for h in got["a"]["hits"]]
    b = [h["id"] for h in got["b"]["hits"]]
    for profile, ids in (("fusion", a), ("default", b)):
        search = httpx.post(f"{server.url}/v1/indexes/scifact/search",
                            json={"query": text, "size": 20, "profile": profile}, timeout=60).json()
        assert ids == [h["id"] for h in search["hits"]]
    assert got["overlap"] == len(set(a[:10]) & set(b[:10]))
    assert got["jaccard"] == pytest.approx(len(set(a[:10]) & set(b[:10])) / len(set(a[:10]) | set(b[:10])), abs=1e-6)
    assert got["rbo"] == pytest.approx(_rbo_by_definition(a, b, 0.9, 10), abs=1e-6)
    for side, ids in (("a", a), ("b", b)):
        run = {"q": {d: float(len(ids) - i) for i, d in enumerate(ids)}}
        want = ir_measures.calc_aggregate([nDCG @ 10], {"q": rel}, run)[nDCG @ 10]
        assert got[side]["ndcg_10"] == pytest.approx(want, abs=1e-6)
    rows = {row["id"]: row for row in got["rows"]}
    assert set(rows) == set(a) | set(b)
    for d, row in rows.items():
        if row["rank_a"] and row["rank_b"]:
            assert row["diff"] == row["rank_a"] - row["rank_b"]
    r = httpx.post(f"{server.url}/v1/indexes/scifact/compare", json={"query": text, "a": "fusion", "b": "x"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "profile"
    r = httpx.post(f"{server.url}/v1/indexes/scifact/compare", json={"query": text, "a": "fusion", "b": "ltr", "k": 30})
    assert r.status_code == 422 and r.json()["error"]["field"] == "k"


def test_judgments_saved_as_qrels_that_cascade_eval_reads(service, monkeypatch):
    server, s, wb = service
    from typer.testing import CliRunner

    from cascade.cli import app as cli
    from cascade.settings import get_settings

    qid, text, rel = _judged_query(wb)
    other = list(wb.qrels)[1]
    url = f"{server.url}/v1/indexes/scifact/judgments"
    relevant = next(iter(rel))
    r = httpx.put(url, json={"query": text, "doc_id": relevant, "grade": 3})
    assert r.status_code == 200 and r.json()["query_id"] == qid and r.json()["sources"][relevant] == "ui"
    r = httpx.put(url, json={"query": wb.queries[other], "doc_id": next(iter(wb.qrels[other])), "grade": 2})
    assert r.status_code == 200
    folder = s.judgments_dir / "scifact"
    assert load_qrels(folder, "ui") == {qid: {relevant: 3}, other: {next(iter(wb.qrels[other])): 2}}
    assert httpx.get(url, params={"query": text}).json()["labels"][relevant] == 3
    bad = [({"query": text, "doc_id": "no-such-doc", "grade": 1}, "doc_id"),
           ({"query": text, "doc_id": relevant, "grade": 7}, "grade"), ({"query": text, "doc_id": relevant}, "grade")]
    for body, field in bad:
        r = httpx.put(url, json=body)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    # export, then import into an emptied store: the same judgments
    exported = httpx.get(f"{url}/export", params={"format": "jsonl"})
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in exported.headers["content-disposition"]
    r = httpx.post(f"{url}/import", params={"mode": "replace"}, content=exported.text)
    assert r.status_code == 200 and r.json() == {"index": "scifact", "imported": 2, "ui_judgments": 2}
    tsv = f"query-id\tcorpus-id\tscore\n{qid}\tno-such-doc\t1\n"
    r = httpx.post(f"{url}/import", content=tsv)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("line 2: index scifact has no document")
    listed = httpx.get(f"{url}/queries").json()
    assert listed["ui_judgments"] == 2 and listed["folder"] == "scifact/qrels/ui.tsv"
    assert {q["query_id"] for q in listed["queries"] if q["source"] == "ui"} == {qid, other}
    # `cascade eval` on the judgments folder (a dataset given as a path), then the service shows that eval
    for k, v in {"INDEX_DIR": s.index_dir, "CONFIG_DIR": s.config_dir, "TRAINED_DIR": s.trained_dir,
                 "EVALS_DIR": s.evals_dir, "DATA_DIR": s.data_dir, "MODELS_DIR": s.models_dir}.items():
        monkeypatch.setenv(f"CASCADE_{k}", str(v))
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(cli, ["eval", "--dataset", str(folder), "--split", "ui", "--profile", "ltr"])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 0, res.output
    evals = httpx.get(f"{server.url}/v1/indexes/scifact/evals").json()
    assert evals["config_version"] == "wb-1"
    (ev,) = evals["evals"]
    assert ev["profile"] == "ltr" and ev["split"] == "ui" and ev["queries"] == 2
    assert [st["name"] for st in ev["stages"]] == ["bm25", "knn", "fusion", "ltr"]
    assert str(s.evals_dir) not in json.dumps(evals)  # no server paths in public answers


def test_page_and_assets_are_served_locally(service):
    server, _, _ = service
    r = httpx.get(f"{server.url}/ui")
    assert r.status_code == 200 and "<title>cascade workbench</title>" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "http" not in r.text.replace("http-equiv", "")  # no other host named anywhere in the page
    js = httpx.get(f"{server.url}/ui/assets/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{server.url}/ui/assets/style.css").headers["content-type"].startswith("text/css")
    for bad in ("nope.js", "..%2F__init__.py", "index.html"):
        r = httpx.get(f"{server.url}/ui/assets/{bad}")
        assert r.status_code == 404 and "error" in r.json()


def test_keys_guard_writes_and_private_reads(workbench_index, tmp_path):  # noqa: F811
    s = workbench_index.settings(tmp_path, admin_api_key="s3cret", public_ops_endpoints=False)
    with ServerThread(create_app(s, ConfigSource(directory=workbench_index.config_dir)), s) as server:
        wait_until(lambda: httpx.get(server.url + "/readyz").json()["status"] == "ready", 180, what="/readyz")
        qid, text, rel = _judged_query(workbench_index)
        url = f"{server.url}/v1/indexes/scifact/judgments"
        body = {"query": text, "doc_id": next(iter(rel)), "grade": 1}
        r = httpx.put(url, json=body)
        assert r.status_code == 401 and r.json()["error"]["field"] == "X-API-Key"
        assert "admin key" in r.json()["error"]["message"]
        assert httpx.get(url, params={"query": text}).status_code == 401  # reads follow CASCADE_PUBLIC_OPS_ENDPOINTS
        assert httpx.get(f"{server.url}/v1/indexes/scifact/evals").status_code == 401
        key = {"X-API-Key": "s3cret"}
        assert httpx.put(url, json=body, headers=key).status_code == 200
        assert httpx.get(url, params={"query": text}, headers=key).json()["labels"][body["doc_id"]] == 1
        # searching and the page stay public, like search itself
        assert httpx.get(f"{server.url}/ui").status_code == 200
        assert httpx.post(f"{server.url}/v1/indexes/scifact/steps", json={"query": text, "depth": 5},
                          timeout=60).status_code == 200


def test_openapi_lists_the_workbench_endpoints(service):
    server, _, _ = service
    spec = httpx.get(f"{server.url}/openapi.json").json()
    paths = spec["paths"]
    for p, methods in {"/v1/indexes/{index}/steps": {"post"}, "/v1/indexes/{index}/compare": {"post"},
                       "/v1/indexes/{index}/judgments": {"get", "put"},
                       "/v1/indexes/{index}/judgments/import": {"post"},
                       "/v1/indexes/{index}/evals": {"get"}}.items():
        assert methods <= set(paths[p]), p
    assert not any(p.startswith("/ui") for p in paths)



def test_keyless_writes_refuse_other_web_sites(service):
    """Without an admin key, writes are taken from this machine only, and a browser here is this machine:
    a page of another site (or a DNS name rebound to 127.0.0.1) must not be able to save or wipe judgments."""
    server, s, wb = service
    qid, text, rel = _judged_query(wb)
    url = f"{server.url}/v1/indexes/scifact/judgments"
    doc = next(iter(rel))
    line = json.dumps({"query": text, "doc_id": doc, "grade": 1}) + "\n"
    saved = s.judgments_dir / "scifact" / "qrels" / "ui.tsv"
    before = saved.read_text() if saved.exists() else None
    refused = [
        # a form or fetch elsewhere posting text/plain: no CORS preflight stands in its way
        dict(method="POST", url=f"{url}/import?mode=replace", content=line,
             headers={"Origin": "https://elsewhere.example", "Content-Type": "text/plain"}),
        dict(method="POST", url=f"{url}/import", content=line, headers={"Sec-Fetch-Site": "cross-site"}),
        # DNS rebinding: same origin to the browser, but the Host header names the other site
        dict(method="PUT", url=url, json={"query": text, "doc_id": doc, "grade": 1},
             headers={"Host": "rebound.example:80", "Origin": "http://rebound.example:80"}),
    ]
    for req in refused:
        r = httpx.request(**req)
        assert r.status_code == 403 and r.json()["error"]["field"] == "Origin", (req, r.text)
    assert (saved.read_text() if saved.exists() else None) == before
    # the workbench's own page (same origin) and clients that send no Origin (curl, scripts) may
    r = httpx.put(url, json={"query": text, "doc_id": doc, "grade": 1}, headers={"Origin": server.url})
    assert r.status_code == 200, r.text
    assert httpx.put(url, json={"query": text, "doc_id": doc, "grade": None}).status_code == 200


def test_serve_prints_the_workbench_url(workbench_index, monkeypatch, capsys):  # noqa: F811
    import cascade.service
    from cascade.cli.serve import _serve

    monkeypatch.setattr(cascade.service, "create_app", lambda *a, **k: None)
    monkeypatch.setattr(cascade.service, "serve", lambda *a, **k: None)  # say what it would serve, serve nothing
    _serve(ConfigSource(directory=workbench_index.config_dir), "127.0.0.1", 8123, access_log=False)
    assert "http://127.0.0.1:8123/ui" in capsys.readouterr().err
