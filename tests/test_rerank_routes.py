"""The rerank APIs over real HTTP: shapes, errors in each API's own body, truncation, the cache, keys, prefixes,
degraded stages, overload, timeouts and multimodal documents, with the shared cross-encoder on real SciFact
abstracts (the session's server: tests/rerank_fixtures.py).

Every route is compared with cascade's own search: the ``default`` profile of the test index scores every
fused candidate with the cross-encoder, so searching a claim ranks every document of the index, and any
rerank route given the same documents must return that order with the logistic of those scores.
"""

from __future__ import annotations

import json
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from cascade.candidates import Candidates
from cascade.config import BUILTIN_CONFIG_DIR, load_config_file
from cascade.controller import Cascade
from cascade.errors import ConfigError
from cascade.query import Query
from cascade.service.rerank.core import (
    DocumentFields, RerankCall, build_candidates, check_models, config_refusal, descending, number, relevance,
)
from tests.conftest import tiny_config
from tests.service_fixtures import LengthStage, wait_until

pytest.register_assert_rewrite("tests.rerank_fixtures")  # its checks are assertions too
from tests.rerank_fixtures import NAME, SCORE_KEY, assert_same_ranking, changed, logit, search_order  # noqa: E402

pytest_plugins = ["tests.rerank_fixtures"]  # the session's one server (see that module)

ROOT = BUILTIN_CONFIG_DIR.parent.parent


def texts(sample) -> list[str]:
    return [sample.text(d) for d in sample.docs]


def ids_of(sample, order: list[int]) -> list[str]:
    return [sample.docs[i]["_id"] for i in order]


def strictly_decreasing(xs: list[float]) -> bool:
    return all(a > b for a, b in zip(xs, xs[1:]))


def test_every_route_ranks_like_cascade_search(served):
    http, sample = served.http, served.sample
    query = sample.claims[0][1]
    docs = texts(sample)
    expected = search_order(http, query, len(docs))
    assert len(expected) == len(docs)

    v2 = http.post("/v2/rerank", json={"model": NAME, "query": query, "documents": docs})
    assert v2.status_code == 200 and v2.headers["x-cascade-model"] == f"{NAME}:default"
    res = v2.json()["results"]
    assert_same_ranking(ids_of(sample, [r["index"] for r in res]), expected, [r["relevance_score"] for r in res])
    assert strictly_decreasing([r["relevance_score"] for r in res])

    v1 = http.post("/v1/rerank", json={"model": NAME, "query": query, "documents": docs, "top_n": 5}).json()
    assert [r["index"] for r in v1["results"]] == [r["index"] for r in res[:5]]
    assert v1["results"][0]["document"] == {"text": docs[res[0]["index"]]}  # Cohere/Jina echo objects by default
    assert [d["index"] for d in v1["data"]] == [r["index"] for r in res[:5]]  # Voyage's array
    assert v1["data"][0]["document"] == docs[res[0]["index"]] and v1["usage"]["total_tokens"] > 0

    voyage = http.post("/v1/rerank", json={"model": NAME, "query": query, "documents": docs, "top_k": 3,
                                           "truncation": True}).json()
    assert len(voyage["data"]) == 3 and "document" not in voyage["data"][0]  # Voyage's default: no echo

    tei = http.post("/rerank", json={"model": NAME, "query": query, "texts": docs, "raw_scores": True,
                                     "return_text": True})
    ranks = tei.json()
    assert len(ranks) == len(docs) and ranks[0]["text"] == docs[ranks[0]["index"]]
    assert strictly_decreasing([r["score"] for r in ranks])
    # raw scores are the cross-encoder's own, as the search reports them
    assert_same_ranking(ids_of(sample, [r["index"] for r in ranks]), expected)
    np.testing.assert_allclose([r["score"] for r in ranks], [s for _, s in expected], atol=2e-3)

    score = http.post("/score", headers={"Authorization": f"Bearer {SCORE_KEY}"},
                      json={"model": NAME, "text_1": query, "text_2": docs}).json()
    by_index = {d["index"]: d["score"] for d in score["data"]}
    assert [d["index"] for d in score["data"]] == list(range(len(docs)))  # vLLM: in the order given
    np.testing.assert_allclose([logit(by_index[r["index"]]) for r in res], [logit(r["relevance_score"]) for r in res],
                               atol=1e-6)


def test_model_names_prefix_and_aliases(served):
    http, sample = served.http, served.sample
    query, docs = sample.claims[1][1], texts(sample)[:6]
    a = http.post("/cascade/v2/rerank", json={"model": f"{NAME}:default", "query": query, "documents": docs})
    b = http.post("/v2/rerank", json={"model": "rerank-english-v3.0", "query": query, "documents": docs})
    c = http.post("/cascade/rerank", json={"query": query, "texts": docs})  # no model: the only index's default
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.json()["results"] == b.json()["results"]
    assert [r["index"] for r in c.json()] == [r["index"] for r in a.json()["results"]]


def test_errors_come_in_each_apis_own_shape(served):
    http, sample = served.http, served.sample
    docs = texts(sample)[:3]
    names = f"{NAME}, {NAME}:default"

    r = http.post("/v1/rerank", json={"model": "nope", "query": "q", "documents": docs})
    assert r.status_code == 404 and set(r.json()) == {"message", "detail"} and names in r.json()["message"]
    r = http.post("/v2/rerank", json={"model": "nope", "query": "q", "documents": docs})
    assert r.status_code == 404 and list(r.json()) == ["message"] and "unknown model 'nope'" in r.json()["message"]
    r = http.post("/score", headers={"Authorization": SCORE_KEY}, json={"model": "nope", "text_1": "q", "text_2": docs})
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"
    assert r.json()["error"]["param"] == "model"

    for profile, why in (("features", "reads features"), ("retrieval", "has no stages")):
        r = http.post("/v2/rerank", json={"model": f"{NAME}:{profile}", "query": "q", "documents": docs})
        assert r.status_code == 400 and why in r.json()["message"] and names in r.json()["message"]
    r = http.post("/v2/rerank", json={"model": f"{NAME}:nothere", "query": "q", "documents": docs})
    assert r.status_code == 404 and "no rank profile 'nothere'" in r.json()["message"]

    # the same field-naming messages as the search API
    r = http.post("/v2/rerank", json={"model": NAME, "query": "q", "documents": ["ok", 7]})
    assert r.status_code == 400 and r.json()["message"].startswith("documents.1")
    r = http.post("/v2/rerank", json={"model": NAME, "documents": docs})
    assert r.json() == {"message": "query: required"}
    r = http.post("/v1/rerank", json={"model": NAME, "query": "q", "documents": []})
    assert r.status_code == 400 and "documents: must hold at least one document" == r.json()["detail"]
    r = http.post("/v1/rerank", json={"model": NAME, "query": "q", "documents": [{"text": "a", "image": "x.png"}]})
    assert r.status_code == 400 and r.json()["message"].startswith("documents.0.image: this profile ranks text only")
    r = http.post("/score", headers={"Authorization": SCORE_KEY},
                  json={"model": NAME, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "text_2"
    r = http.post("/v2/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["message"].startswith("body: malformed JSON")
    r = http.post("/cascade/v2/rerank", json={"model": NAME, "query": "q", "documents": ["x" * 1000] * 600})
    assert r.status_code == 413 and "CASCADE_RERANK_MAX_REQUEST_BYTES" in r.json()["message"]


def test_tei_errors_keep_tei_statuses_and_types(served):
    """TEI pairs each error type with one status: Empty 400, Validation 413, Tokenizer 422; a key is a bare 401."""
    http, docs = served.http, texts(served.sample)[:3]
    names = f"{NAME}, {NAME}:default"
    r = http.post("/rerank", json={"query": "q", "texts": []})
    assert r.status_code == 400 and r.json() == {"error": "texts: must hold at least one document",
                                                 "error_type": "Empty"}
    r = http.post("/rerank", json={"query": " ", "texts": docs})
    assert r.status_code == 400 and r.json() == {"error": "query: query text is empty", "error_type": "Empty"}
    r = http.post("/rerank", json={"model": "nope", "query": "q", "texts": docs})
    assert r.status_code == 422 and r.json()["error_type"] == "Tokenizer" and names in r.json()["error"]
    r = http.post("/rerank", json={"query": "q", "texts": ["a", 3]})
    assert r.status_code == 422 and r.json()["error"].startswith("texts.1")
    r = http.post("/rerank", json={"model": NAME, "query": "q", "texts": ["x" * 1000] * 600})
    assert r.status_code == 413 and r.json()["error_type"] == "Validation"
    assert "CASCADE_RERANK_MAX_REQUEST_BYTES" in r.json()["error"]
    keys = {**served.state.settings.rerank_api_keys, "/rerank": SecretStr("tei-key")}
    with changed(served.state.settings, rerank_api_keys=keys):
        for path in ("/rerank", "/info"):
            r = http.request("POST" if path == "/rerank" else "GET", path, json={"query": "q", "texts": docs})
            assert r.status_code == 401 and r.content == b""  # TEI's bare 401: no body, no error type
        assert http.post("/rerank", json={"query": "q", "texts": docs},
                         headers={"Authorization": "tei-key"}).status_code == 200


def test_api_key_per_route(served):
    http = served.http
    body = {"model": NAME, "text_1": "q", "text_2": ["a b"]}
    r = http.post("/score", json=body)
    assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
    assert http.post("/v1/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    for headers in ({"Authorization": f"Bearer {SCORE_KEY}"}, {"Authorization": SCORE_KEY}, {"X-API-Key": SCORE_KEY}):
        assert http.post("/cascade/score", json=body, headers=headers).status_code == 200
    # other routes have no key configured
    assert http.post("/v2/rerank", json={"model": NAME, "query": "q", "documents": ["a b"]}).status_code == 200


def test_bad_documents_do_not_fail_the_others_and_every_score_is_a_float(served):
    http, sample = served.http, served.sample
    query = sample.claims[2][1]
    good = texts(sample)[:4]
    docs = [good[0], "", "   \x00\x07  ", good[1], "word " * 20_000, good[2], {"title": "only a title"}, good[3]]
    r = http.post("/v1/rerank", json={"model": NAME, "query": query, "documents": docs, "return_documents": False})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert sorted(x["index"] for x in res) == list(range(len(docs)))
    raw = r.text
    for m in re.finditer(r'"relevance_score":(-?[0-9.eE+-]+)', raw):
        assert re.search(r"[.eE]", m.group(1)) and len(m.group(1)) <= 18  # a Double for json-smart, never an int
    # the two documents without text rank last (the documented fallback), the long one was truncated
    assert {x["index"] for x in res[-2:]} == {1, 2}
    assert int(r.headers["x-cascade-truncated"]) >= 1 and "x-cascade-degraded" not in r.headers
    warnings = r.json()["meta"]["warnings"]
    assert warnings and warnings[0].startswith(f"{r.headers['x-cascade-truncated']} of {len(docs)} documents")


def test_object_documents_rank_on_the_profiles_fields_and_come_back_whole(served):
    """Cohere's reading of an object: the profile's fields (title, text), else `text`; other keys are not read,
    not type-checked, and echoed as sent."""
    http, sample = served.http, served.sample
    query, docs = sample.claims[0][1], sample.docs[:5]
    objects = [{"title": d.get("title"), "text": d["text"], "id": f"doc-{d['_id']}", "url": "https://x.test/a",
                "meta": {"nested": [1, {"deep": True}]}, "flag": True, "score": None} for d in docs]
    plain = http.post("/v2/rerank", json={"model": NAME, "query": query, "documents": [sample.text(d) for d in docs]})
    r = http.post("/v2/rerank", json={"model": NAME, "query": query, "documents": objects, "return_documents": True})
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()["results"]] == [x["index"] for x in plain.json()["results"]]
    np.testing.assert_allclose([x["relevance_score"] for x in r.json()["results"]],
                               [x["relevance_score"] for x in plain.json()["results"]], atol=1e-6)
    assert all(x["document"] == objects[x["index"]] for x in r.json()["results"])  # every key, as sent
    # `text` alone (Cohere's default field) is read; an object with none of the read keys ranks last
    r = http.post("/v1/rerank", json={"model": NAME, "query": query, "documents": [
        {"content": docs[0]["text"], "source": "s"}, {"text": docs[0]["text"], "n": 3}]}).json()["results"]
    assert [x["index"] for x in r] == [1, 0] and r[0]["document"] == {"text": docs[0]["text"], "n": 3}


def test_truncation_is_counted_and_max_tokens_per_doc_applied(served):
    http, sample = served.http, served.sample
    query, docs = sample.claims[0][1], texts(sample)  # ranked (and cached) by the first test
    long = [d for d in docs if len(d.split()) > 200]
    r = http.post("/v2/rerank", json={"model": NAME, "query": query, "documents": docs})
    n = int(r.headers["x-cascade-truncated"])
    assert len(long) <= n < len(docs)  # 256 tokens with the query: the long abstracts are cut
    assert r.json()["meta"]["warnings"][0] == f"{n} of {len(docs)} documents were longer than the model reads " \
                                              f"and were truncated"
    cut = http.post("/v2/rerank", json={"model": NAME, "query": query, "documents": docs, "max_tokens_per_doc": 8})
    assert int(cut.headers["x-cascade-truncated"]) == len(docs)  # every abstract has more than 8 tokens
    assert cut.json()["results"] != r.json()["results"]  # ranked on 8 tokens each: another order


def test_tei_left_truncation_reads_the_end_and_vllm_prompt_truncation_is_refused(served):
    http = served.http
    query = "solar cell efficiency record"
    filler = "the committee met again to discuss the budget of the regional library network " * 40
    docs = [filler + "a new solar cell efficiency record was reported", "unrelated notes on garden birds"]
    right = http.post("/rerank", json={"query": query, "texts": docs, "raw_scores": True})
    left = http.post("/rerank", json={"query": query, "texts": docs, "raw_scores": True,
                                      "truncation_direction": "Left"})
    assert right.headers["x-cascade-truncated"] == left.headers["x-cascade-truncated"] == "1"
    score = {p: {x["index"]: x["score"] for x in r.json()} for p, r in (("right", right), ("left", left))}
    assert score["left"][0] > score["right"][0] + 3  # the model read the sentence at the end
    assert [x["index"] for x in left.json()] == [0, 1]
    r = http.post("/score", headers={"X-API-Key": SCORE_KEY},
                  json={"model": NAME, "text_1": "q", "text_2": ["a"], "truncate_prompt_tokens": 128})
    assert r.status_code == 400 and r.json()["error"]["param"] == "truncate_prompt_tokens"


def test_identical_requests_are_answered_from_the_cache_across_apis(served):
    http, sample = served.http, served.sample
    query, docs = "cache probe: " + sample.claims[0][1], texts(sample)[:8]
    first = http.post("/v2/rerank", json={"model": NAME, "query": query, "documents": docs})
    again = http.post("/v2/rerank", json={"model": NAME, "query": query, "documents": docs})
    tei = http.post("/rerank", json={"query": query, "texts": docs})
    assert first.headers["x-cascade-cache"] == "miss"
    assert again.headers["x-cascade-cache"] == "hit" and again.json()["results"] == first.json()["results"]
    assert tei.headers["x-cascade-cache"] == "hit"  # same query, documents and profile: one entry for every API
    metrics = http.get("/metrics").text
    assert re.search(r'cascade_rerank_requests_total\{api="cohere",cache="hit",model="scifact-mini:default",'
                     r'status="200"\} [1-9]', metrics)


def test_no_document_cap_pairwise_scores_and_ties_broken_by_rank(served):
    http, sample = served.http, served.sample
    docs = [f"solar cell efficiency note {i}" if i % 3 else f"unrelated filler text {i}" for i in range(300)]
    r = http.post("/rerank", json={"query": "solar cell efficiency", "texts": docs})  # TEI would refuse > 32
    ranks = r.json()
    assert r.status_code == 200 and sorted(x["index"] for x in ranks) == list(range(300))
    assert all(ranks[k]["index"] % 3 for k in range(200))  # every solar text above every filler one

    q1, q2 = sample.claims[0][1], sample.claims[1][1]
    d = texts(sample)[:4]
    pair = http.post("/score", headers={"X-API-Key": SCORE_KEY},
                     json={"model": NAME, "queries": [q1, q2, q1, q2], "documents": d}).json()["data"]
    one = http.post("/score", headers={"X-API-Key": SCORE_KEY},
                    json={"model": NAME, "text_1": q1, "text_2": [d[0], d[2]]}).json()["data"]
    assert math.isclose(pair[0]["score"], one[0]["score"], abs_tol=1e-9)
    assert math.isclose(pair[2]["score"], one[1]["score"], abs_tol=1e-9)
    # an error in one of several queries names it; the others' rankings are not waited for
    r = http.post("/score", headers={"X-API-Key": SCORE_KEY},
                  json={"model": NAME, "queries": [q1, q2, " ", q2], "documents": d})
    assert r.status_code == 400 and r.json()["error"]["param"] == "queries.2"

    # the same text twice ties in the model; the answer still orders them, strictly, by rank
    same = http.post("/v2/rerank", json={"model": NAME, "query": q1, "documents": [d[0], d[0], d[0]]}).json()
    scores = [x["relevance_score"] for x in same["results"]]
    assert sorted(x["index"] for x in same["results"]) == [0, 1, 2] and strictly_decreasing(scores)
    assert scores[0] - scores[2] < 1e-9


def test_the_index_latency_budget_does_not_cut_the_rerank_stage(served):
    """limits.budget_ms is a search's: it skips the cross-encoder of a search, never of a rerank call."""
    http, sample = served.http, served.sample
    query, docs = sample.claims[0][1], sample.docs[:10]
    entry = served.entry
    limits = entry.config.limits.model_copy(update={"budget_ms": 1.0})
    cache = entry.config.cache.model_copy(update={"enabled": False})  # computed here, under the budget
    with changed(entry, config=entry.config.model_copy(update={"limits": limits, "cache": cache})):
        searched = http.post(f"/v1/indexes/{NAME}/search", json={"query": query, "size": 10}).json()
        assert searched["budget"]["skipped"] == ["cross_encoder"]  # the same budget does cut a search
        r = http.post("/v2/rerank", json={"model": NAME, "query": query, "documents": [sample.text(d) for d in docs]})
    assert r.status_code == 200 and "x-cascade-degraded" not in r.headers
    assert not any("failed" in w for w in r.json()["meta"]["warnings"])
    res = r.json()["results"]
    # the model's order and scores, as an unbudgeted search of the index scores the same documents
    mine = {d["_id"] for d in docs}
    expected = [(i, s) for i, s in search_order(http, query, len(sample.docs)) if i in mine]
    assert_same_ranking(ids_of(sample, [x["index"] for x in res]), expected, [x["relevance_score"] for x in res])


def test_a_retry_after_a_timeout_joins_the_running_ranking(served):
    """With the cache off, a client's retry after a 504 must not start the ranking again (a retry storm)."""
    http, remote = served.http, served.remote
    entry, settings = served.entry, served.state.settings
    remote.delay_s = 1.2
    before = len(remote.sent("slow"))
    no_cache = entry.config.model_copy(update={"cache": entry.config.cache.model_copy(update={"enabled": False})})
    body = {"model": f"{NAME}:slow", "query": "slow model probe", "documents": ["x", "probe text", "slow model"]}
    try:
        with changed(entry, config=no_cache), changed(settings, rerank_timeout_s=1.0):
            late = http.post("/v2/rerank", json=body)
            assert late.status_code == 504 and "CASCADE_RERANK_TIMEOUT_S" in late.json()["message"]
            retry = http.post("/v2/rerank", json=body)  # arrives while the first ranking still runs
            assert retry.status_code == 200 and [x["index"] for x in retry.json()["results"]] == [2, 1, 0]
            assert len(remote.sent("slow")) == before + 1  # one ranking for both
            shared = http.get("/metrics").text
            assert re.search(rf'cascade_singleflight_shared_total\{{index="{NAME}"\}} [1-9]', shared)
            # /score's rankings run under one deadline for the whole request
            r = http.post("/score", headers={"X-API-Key": SCORE_KEY},
                          json={"model": f"{NAME}:slow", "queries": ["slow a", "slow b"], "documents": ["p", "q"]})
            assert r.status_code == 504 and r.json()["error"]["type"] == "TimeoutError"
    finally:  # rankings left running hold the pool's one slot: let them finish
        wait_until(lambda: len(served.state.singleflight) == 0, 30, what="the slow rankings to finish")


def test_rerank_has_its_own_admission_pool(served):
    """One slot and one queue place for rerank calls (the session's settings): a third concurrent call is turned
    away at once with 429 + Retry-After, while searches, in their own pool, go on."""
    http, remote, url = served.http, served.remote, served.url
    remote.delay_s = 1.0

    def post(k: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as c:
            return c.post("/v2/rerank", json={"model": f"{NAME}:slow", "query": f"pool probe {k}", "documents": ["a"]})

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, 1)  # holds the slot for a second (the remote model's delay)
        wait_until(lambda: any(b["query"] == "pool probe 1" for b in remote.sent("slow")), 10, what="the first call")
        second = pool.submit(post, 2)  # waits in the queue
        time.sleep(0.3)
        third = post(3)
        search = http.post(f"/v1/indexes/{NAME}/search", json={"query": "pool probe", "profile": "retrieval"})
        assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
        assert "overloaded" in third.json()["message"]
        assert search.status_code == 200
        assert first.result().status_code == 200 and second.result().status_code == 200


def test_a_failing_stage_degrades_the_answer_instead_of_failing_it(served):
    http, sample = served.http, served.sample
    docs = texts(sample)[:5]
    r = http.post("/v2/rerank", json={"model": f"{NAME}:remote-down", "query": "q", "documents": docs})
    assert r.status_code == 200 and r.headers["x-cascade-degraded"] == "cross_encoder"
    res = r.json()["results"]
    assert [x["index"] for x in res] == list(range(5))  # the caller's order is kept
    assert all(isinstance(x["relevance_score"], float) for x in res)
    assert "cross_encoder failed" in r.json()["meta"]["warnings"][-1]
    again = http.post("/v2/rerank", json={"model": f"{NAME}:remote-down", "query": "q", "documents": docs})
    assert again.headers["x-cascade-cache"] == "miss"  # a degraded answer is not cached


def test_multimodal_documents_reach_the_remote_model_one_modality_each(served):
    http, remote = served.http, served.remote
    before = len(remote.sent("jina-reranker-m0"))
    docs = [{"text": "a small grey cat", "image": "https://img.example/blue-sky.png"},
            {"text": "red apples in a bowl", "image": "data:image/png;base64,UkVEIGFwcGxl"},
            {"text": "a red bus", "image": "https://img.example/red-bus.png"},
            "the red bus timetable",
            {"image": "not an image the model can fetch"}]
    r = http.post("/v1/rerank", json={"model": f"{NAME}:multimodal", "query": "red bus", "documents": docs})
    assert r.status_code == 200, r.text
    # the red-bus image (10; its text alone 2), the timetable (2), one shared word (1), none, and the image the
    # server refused: below every scored document, without failing the others
    assert [x["index"] for x in r.json()["results"]] == [2, 3, 1, 0, 4] and "x-cascade-degraded" not in r.headers
    sent = remote.sent("jina-reranker-m0")[before:]
    assert len(sent) > 1  # the refused batch was split until the bad document was alone
    entries = [d for b in sent for d in b["documents"]]
    assert all(isinstance(d, dict) and len(d) == 1 for d in entries)  # one modality per entry
    assert {"text": "a small grey cat"} in entries and {"image": "https://img.example/blue-sky.png"} in entries
    assert {"image": "data:image/png;base64,UkVEIGFwcGxl"} in entries  # base64 passed on whole


def test_tei_info_and_health(served):
    http, settings = served.http, served.state.settings
    info = http.get("/info").json()
    assert info["model_id"] == NAME and info["max_input_length"] == 256 and "reranker" in info["model_type"]
    assert info["max_client_batch_size"] > 10_000  # no document cap; the body limit is what bounds a request
    h = http.get("/cascade/health")
    assert h.status_code == 200 and h.content == b""
    # healthy means a request without a model would be answered: any reason it would not is 503 Unhealthy
    for default in ("nope", f"{NAME}:features", f"{NAME}:nothere"):
        with changed(settings, rerank_default_model=default):
            h = http.get("/health")
        assert h.status_code == 503 and h.json()["error_type"] == "Unhealthy", default


# ------------------------------------------------------------------------------------------ start-up and config


async def test_bad_rerank_settings_fail_start_up_naming_the_setting(served):
    from cascade.service import create_app
    from cascade.service.registry import ConfigSource

    base = served.state.settings
    source = ConfigSource(directory=base.config_dir)
    cases = [({"rerank_models": {"alias": "nope"}}, "CASCADE_RERANK_MODELS: alias: 'nope' names no index"),
             ({"rerank_models": {"alias": f"{NAME}:nothere"}}, "CASCADE_RERANK_MODELS: alias: index scifact-mini has "
                                                               "no rank profile 'nothere'"),
             ({"rerank_default_model": f"{NAME}:features"}, "CASCADE_RERANK_DEFAULT_MODEL: profile features of "
                                                            "index scifact-mini has stage"),
             ({"rerank_default_model": f"{NAME}:retrieval"}, "has no stages")]
    for change, message in cases:
        app = create_app(base.model_copy(update=change), source)
        with pytest.raises(ConfigError) as err:
            async with app.router.lifespan_context(app):  # fails before any index is opened
                pass
        assert message in str(err.value), str(err.value)
    configs = {name: cfg for name, (cfg, _) in source.read().items()}
    check_models(base.model_copy(update={"rerank_default_model": "rerank-english-v3.0"}), configs)  # an alias: fine


def test_the_documented_model_names_resolve_in_the_shipped_configs():
    """README and docs/rerank.md point clients at names the shipped configs can serve (no model loaded)."""
    configs = {p.stem: load_config_file(p) for p in BUILTIN_CONFIG_DIR.glob("*.yaml")}
    pattern = re.compile(r'(?:model=|Reranker\(|"model": )"([a-z0-9_.-]+(?::[a-z0-9_.-]+)?)"')
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use cascade as your reranker"):]
    found = set(pattern.findall(section[:section.index("\n## ", 3)])) | set(
        pattern.findall((ROOT / "docs" / "rerank.md").read_text()))
    assert "scifact:ce" in found
    for name in found:
        index, _, profile = name.partition(":")
        assert index in configs, name
        assert config_refusal(configs[index], profile or None) is None, name
    assert "reads features" in (config_refusal(configs["scifact"]) or "")  # why the default profile is not named


# ------------------------------------------------------------------------------------------ in-process units


async def test_cascade_rerank_runs_only_the_profile_stages_over_given_candidates():
    stage = LengthStage(rerank=2, keep=2)  # scores by text length, the top 2 of what it is given
    casc = Cascade(tiny_config(), {}, [stage], documents=None)
    cands = Candidates(ids=["a", "b", "c"], fields=[{"text": "xx"}, {"text": "xxxx"}, {"text": "xxxxxx"}],
                       score=np.array([3.0, 2.0, 1.0]))
    res = await casc.rerank(casc.validate(Query("q")), cands)
    assert [t.name for t in res.traces] == ["length"]  # no retriever, fusion or features step
    assert res.candidates.ids == ["b", "a"] and res.traces[0].scored == 2  # its window and keep, as declared

    from cascade.service.rerank.core import ranking_view

    view = ranking_view(casc, 3)  # what the rerank routes run: every document scored, none cut
    res = await view.rerank(casc.validate(Query("q")), cands)
    assert res.candidates.ids == ["c", "b", "a"] and res.traces[0].scored == 3
    assert stage.rerank == 2 and stage.keep == 2  # a view: the profile's own stage is untouched


def test_documents_map_onto_the_profiles_fields():
    class S:
        name, kind, reads_features, image_field = "ce", "cross_encoder", False, None
        text_fields = ("title", "text")

    casc = Cascade(tiny_config(), {}, [S()])
    df = DocumentFields.of(casc)
    assert (df.main, df.image) == ("text", None)
    call = RerankCall("m", "q", ["plain", {"title": "T", "text": "B", "id": "doc-17", "url": "u"},
                                 {"content": "C", "source": "S", "n": 3}, {"text": "X", "meta": {"a": [True]}}])
    c = build_candidates(call, df)
    assert c.fields == [{"text": "plain"}, {"title": "T", "text": "B"}, {}, {"text": "X"}]
    c = build_candidates(RerankCall("m", "q", [{"content": "C", "source": "S"}], rank_fields=["source", "content"]),
                         df)
    assert c.fields == [{"text": "S C"}] and c.score.tolist() == [-0.0]

    class Body(S):
        text_fields = ("body",)

    df = DocumentFields.of(Cascade(tiny_config(), {}, [Body()]))
    assert build_candidates(RerankCall("m", "q", [{"text": "X", "body": None}]), df).fields == [{"body": "X"}]


def test_scores_are_short_finite_doubles_and_strictly_decreasing():
    for x in (-1e300, -37.0, -3.2, 0.0, 1e-9, 2.5, 40.0, 1e300, float("inf")):
        r = relevance(x) if math.isfinite(x) else number(x)
        text = json.dumps(r)
        assert isinstance(r, float) and math.isfinite(r) and ("." in text or "e" in text) and len(text) <= 18
    assert relevance(1.0) > relevance(0.999999) > relevance(-5)
    # logits from ~29 up all round to 1.0 at 12 digits: rank breaks the tie, strictly, at the 12th digit
    saturated = [relevance(x) for x in (41.0, 35.0, 30.0, 29.0)]
    assert saturated == [1.0] * 4
    out = descending(saturated + [relevance(3.0), relevance(3.0), relevance(-800.0), relevance(-900.0)])
    assert strictly_decreasing(out) and out[0] == 1.0 and out[3] > 0.99999999995 and out[-1] > 0
    assert all(len(json.dumps(v)) <= 18 for v in out)
    assert descending([5.0, -3.2, -3.2]) == [5.0, -3.2, -3.20000000001]


def test_the_benchmark_reports_a_p95_only_from_enough_requests():
    """Three requests have no 95th percentile, only a slowest one: the section says so instead of inventing one."""
    from rich.console import Console

    from cascade.bench.rerank_api import P95_MIN, RerankAPIBench, SizeResult

    few = SizeResult(1000, http_ms=[28000.0, 29000.0, 31000.0], server_ms=[27000.0] * 3, inproc_ms=[27500.0] * 3)
    many = SizeResult(20, http_ms=[600.0 + i for i in range(P95_MIN)], server_ms=[590.0] * P95_MIN,
                      inproc_ms=[580.0 + i for i in range(P95_MIN)])
    res = RerankAPIBench("scifact", "minilm-l6-ce-v1", 256, [many, few], (9.5, 9.0, 8.0), (3.1, 5.0, 7.0))
    md = res.markdown("cmd", "machine")
    assert "| 20 | 20 | 0 KiB | 610 | 618 | 619 |" in md and "| 1000 | 3 | 0 KiB | 29000 | — | 31000 |" in md
    assert "at the start: 9.50, at the end 3.10" in md
    console = Console(width=80, record=True)
    console.print(res.table())
    assert "…" not in console.export_text()  # the terminal table fits 80 columns without cutting numbers
