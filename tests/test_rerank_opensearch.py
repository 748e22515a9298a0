"""The OpenSearch integration in docs/rerank.md: the ML Commons connector's exact request body, replayed against a
real server, and the answer checked against the contract of ML Commons' Cohere rerank post-processor.

What ML Commons does, per its `connector.pre_process.cohere.rerank` and `connector.post_process.cohere.rerank`:
the pre-processor sets `query` (the search's query text), `documents` (the hits' texts, as a JSON array) and
`top_n` (their number), which fill the connector's `request_body` template; the answer is filtered to
`$.results` and parsed with json-smart; the post-processor fills `Double[] scores` of size len(results) with
`scores[(Integer) r.index] = (Double) r.relevance_score`. So every document must come back once, `index` must
be an integer token in range and `relevance_score` a decimal token json-smart reads as a Double (an integer
token would be an Integer, more than 18 characters a BigDecimal: both fail the cast). The rerank processor then
orders the hits by those scores, which must be cascade's own order.

What a hit's text is: neural-search's DocumentContextSourceFetcher appends the values of the pipeline's
`document_fields` with no separator (["title", "text"] sends "TitleAbstract..."), so docs/rerank.md names one
field, one that holds the whole text; the replay's hits are such documents (`text`: the title, a space, the
abstract) and their texts are built as the fetcher builds them (:func:`document_context`).

With OPENSEARCH_URL and CASCADE_RERANK_URL_FOR_OPENSEARCH set, the documented steps run on the live cluster,
whose settings the test changes and restores.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest


pytest.register_assert_rewrite("tests.rerank_fixtures")  # its checks are assertions too
from tests.rerank_fixtures import NAME, assert_same_ranking, build, scifact_sample, search_order  # noqa: E402

pytest_plugins = ["tests.rerank_fixtures"]  # the session's one server (see that module)

DOC = Path(__file__).resolve().parent.parent / "docs" / "rerank.md"


def doc_blocks() -> dict[str, dict]:
    """The JSON request blocks of docs/rerank.md, by their first line (``METHOD /path``)."""
    out = {}
    for block in re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S):
        first, _, body = block.partition("\n")
        out[first.strip()] = json.loads(body)
    return out


def render(template: str, parameters: dict[str, str]) -> str:
    """ML Commons' ${parameters.X} substitution (StringSubstitutor over the string parameters)."""
    return re.sub(r"\$\{parameters\.([A-Za-z0-9_]+)\}", lambda m: parameters[m.group(1)], template)


def ml_commons_body(connector: dict, query: str, docs: list[str]) -> bytes:
    """The body ML Commons sends for one rerank: the pre-processor's parameters over the connector's own."""
    action = connector["actions"][0]
    params = {**connector["parameters"],
              "query": json.dumps(query)[1:-1],  # a string parameter, escaped into the template's quotes
              "documents": json.dumps(docs),  # a list parameter: its JSON
              "top_n": str(len(docs))}
    return render(action["request_body"], params).encode()


def post_process(raw: str, n_docs: int) -> list[float]:
    """A port of ML Commons' CohereRerankPostProcessFunction over json-smart's number types."""
    typed = json.loads(raw, parse_int=lambda s: ("Integer", s), parse_float=lambda s: ("Double" if len(s) <= 18
                                                                                       else "BigDecimal", s))
    results = typed["results"]  # the default response filter of this post-processor: $.results
    assert isinstance(results, list) and results and isinstance(results[0], dict)
    assert {"index", "relevance_score"} <= set(results[0])
    scores: list[float | None] = [None] * len(results)
    for r in results:
        kind, index = r["index"]
        assert kind == "Integer", f"index {index} is not an integer"
        kind, value = r["relevance_score"]
        assert kind == "Double", f"relevance_score {value} would be a {kind}, not a Double"
        assert 0 <= int(index) < len(scores)
        assert scores[int(index)] is None, f"index {index} answered twice"
        scores[int(index)] = float(value)
    assert len(results) == n_docs and all(s is not None for s in scores)  # every document, once
    return [float(s) for s in scores if s is not None]


def document_context(hit: dict, fields: list[str]) -> str:
    """A hit's text as neural-search's DocumentContextSourceFetcher builds it: each field's value, appended with
    no separator."""
    return "".join(str(hit.get(f, "")) for f in fields)


def test_documented_connector_body_replayed_meets_the_post_processor_contract(served):
    http, sample = served.http, served.sample
    blocks = doc_blocks()
    connector = blocks["POST /_plugins/_ml/connectors/_create"]
    action = connector["actions"][0]
    assert action["pre_process_function"] == "connector.pre_process.cohere.rerank"
    assert action["post_process_function"] == "connector.post_process.cohere.rerank"
    connector["parameters"]["model"] = NAME  # the docs' model, for this test's index
    fields = blocks["PUT /_search/pipeline/cascade-rerank"]["response_processors"][0]["rerank"]["context"][
        "document_fields"]
    # what the cluster's query returned, in its order: every document of the index, `text` holding the whole text
    hits = [{"_id": d["_id"], "title": d.get("title"), "text": sample.text(d)} for d in sample.docs]
    texts = [document_context(h, fields) for h in hits]
    headers = {k: v.replace("${credential.cohere_key}", "any") for k, v in action["headers"].items()}

    query = sample.claims[0][1]
    for q in (query + ' (with "quotes")\n', query):  # ML Commons escapes the query into the template's string
        r = http.post(urlparse(action["url"]).path, content=ml_commons_body(connector, q, texts), headers=headers)
        assert r.status_code == 200, r.text
        scores = post_process(r.text, len(texts))
        assert len(set(scores)) == len(scores)  # no ties for the processor to order its own way

    # the rerank processor orders the hits by score: cascade's own order for that query
    reranked = [hits[i]["_id"] for i in sorted(range(len(hits)), key=lambda i: -scores[i])]
    assert_same_ranking(reranked, search_order(http, query, len(hits)))


def test_several_document_fields_arrive_concatenated_without_a_separator():
    """Why the docs name one field: two fields reach cascade glued together, as the fetcher appends them."""
    hit = {"title": "Statins", "text": "reduce cholesterol"}
    assert document_context(hit, ["title", "text"]) == "Statinsreduce cholesterol"
    pipeline = doc_blocks()["PUT /_search/pipeline/cascade-rerank"]["response_processors"][0]["rerank"]
    assert pipeline["context"]["document_fields"] == ["text"]
    assert "no separator" in DOC.read_text()


def test_documented_settings_pipeline_and_search_fit_together():
    blocks = doc_blocks()
    connector = blocks["POST /_plugins/_ml/connectors/_create"]
    url = connector["actions"][0]["url"]
    trusted = blocks["PUT /_cluster/settings"]["persistent"]
    assert any(re.match(p, url) for p in trusted["plugins.ml_commons.trusted_connector_endpoints_regex"])
    assert trusted["plugins.ml_commons.connector.private_ip_enabled"] is True
    assert urlparse(url).path == "/v1/rerank"
    # the template renders to JSON for any query and documents
    body = json.loads(ml_commons_body(connector, 'a "quoted"\nquery\\', ["x", 'y "z"']))
    assert body == {"documents": ["x", 'y "z"'], "query": 'a "quoted"\nquery\\', "model": "scifact:ce",
                    "top_n": 2, "return_documents": False}
    model = blocks["POST /_plugins/_ml/models/_register?deploy=true"]
    assert model["function_name"] == "remote" and model["connector_id"]
    proc = blocks["PUT /_search/pipeline/cascade-rerank"]["response_processors"][0]["rerank"]
    assert proc["ml_opensearch"]["model_id"] and proc["context"]["document_fields"] == ["text"]
    search = blocks["POST /articles/_search?search_pipeline=cascade-rerank"]
    assert search["ext"]["rerank"]["query_context"]["query_text"]


OS_URL = os.environ.get("OPENSEARCH_URL")
REACH = os.environ.get("CASCADE_RERANK_URL_FOR_OPENSEARCH")  # e.g. http://host.docker.internal:18090


@pytest.mark.opensearch_live
@pytest.mark.skipif(not (OS_URL and REACH), reason="needs OPENSEARCH_URL (a real cluster) and "
                    "CASCADE_RERANK_URL_FOR_OPENSEARCH (where that cluster reaches this test's server)")
def test_live_cluster_reranks_through_cascade(tmp_path):
    import uvicorn

    from cascade.service import create_app, server_config
    from cascade.service.registry import ConfigSource
    from tests.service_fixtures import wait_until

    sample = scifact_sample()
    settings, configs = build(tmp_path, sample)
    port = urlparse(REACH).port or 80
    server = uvicorn.Server(server_config(create_app(settings, ConfigSource(directory=configs)), "0.0.0.0", port,
                                          settings, access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    auth = (os.environ["OPENSEARCH_USERNAME"], os.environ.get("OPENSEARCH_PASSWORD", "")) \
        if os.environ.get("OPENSEARCH_USERNAME") else None
    verify = os.environ.get("OPENSEARCH_VERIFY_CERTS", "true").lower() not in ("0", "false", "no")
    index, blocks = f"cascade-rerank-{uuid.uuid4().hex[:8]}", doc_blocks()
    created: list[str] = []
    restore: dict | None = None  # the cluster's own values of the settings the docs change (None: unset)
    with httpx.Client(base_url=OS_URL, auth=auth, verify=verify, timeout=60) as os_http, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        try:
            wait_until(lambda: server.started, 60, what="uvicorn")
            wait_until(lambda: http.get("/readyz").json()["status"] != "loading", 120, what="/readyz")
            host = re.escape(f"{urlparse(REACH).hostname}:{port}")
            settings_body = blocks["PUT /_cluster/settings"]
            trusted = [f"^http://{host}/.*$"]
            settings_body["persistent"]["plugins.ml_commons.trusted_connector_endpoints_regex"] = trusted
            now = os_http.get("/_cluster/settings", params={"flat_settings": "true"})
            now.raise_for_status()
            persistent = now.json().get("persistent", {})
            restore = {k: persistent.get(k) for k in settings_body["persistent"]}
            os_http.put("/_cluster/settings", json=settings_body).raise_for_status()
            os_http.put(f"/{index}", json={"mappings": {"properties": {"title": {"type": "text"},
                                                                       "text": {"type": "text"}}}}).raise_for_status()
            created.append(f"/{index}")
            # `text` holds the whole text (title, a space, the abstract): the one field the pipeline sends
            lines = "".join(json.dumps({"index": {"_index": index, "_id": d["_id"]}}) + "\n" +
                            json.dumps({"title": d.get("title", ""), "text": sample.text(d)}) + "\n"
                            for d in sample.docs)
            os_http.post("/_bulk?refresh=true", content=lines,
                         headers={"Content-Type": "application/x-ndjson"}).raise_for_status()
            connector = blocks["POST /_plugins/_ml/connectors/_create"]
            connector["parameters"]["model"] = NAME
            connector["actions"][0]["url"] = f"{REACH.rstrip('/')}/v1/rerank"
            cid = os_http.post("/_plugins/_ml/connectors/_create", json=connector).json()["connector_id"]
            created.append(f"/_plugins/_ml/connectors/{cid}")
            model = {**blocks["POST /_plugins/_ml/models/_register?deploy=true"], "connector_id": cid}
            reg = os_http.post("/_plugins/_ml/models/_register?deploy=true", json=model).json()
            task = reg["task_id"]
            mid = wait_until(lambda: os_http.get(f"/_plugins/_ml/tasks/{task}").json().get("model_id"), 120,
                             every_s=1, what="the model to register")
            wait_until(lambda: os_http.get(f"/_plugins/_ml/models/{mid}").json().get("model_state") == "DEPLOYED",
                       120, every_s=1, what="the model to deploy")
            created[:0] = [f"/_plugins/_ml/models/{mid}"]
            pipe = blocks["PUT /_search/pipeline/cascade-rerank"]
            pipe["response_processors"][0]["rerank"]["ml_opensearch"]["model_id"] = mid
            pipeline = f"{index}-pipeline"
            os_http.put(f"/_search/pipeline/{pipeline}", json=pipe).raise_for_status()
            created.append(f"/_search/pipeline/{pipeline}")
            query = sample.claims[0][1]
            found = os_http.post(f"/{index}/_search?search_pipeline={pipeline}", json={
                "query": {"match_all": {}}, "size": len(sample.docs),
                "ext": {"rerank": {"query_context": {"query_text": query}}}}).json()
            got = [h["_id"] for h in found["hits"]["hits"]]
            assert_same_ranking(got, search_order(http, query, len(sample.docs)))
        finally:
            for path in reversed(created):
                if path.startswith("/_plugins/_ml/models/"):
                    os_http.post(f"{path}/_undeploy")
                os_http.delete(path)
            if restore is not None:
                os_http.put("/_cluster/settings", json={"persistent": restore})
            server.should_exit = True
            thread.join(15)
