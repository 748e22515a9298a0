"""Real rerank client libraries from PyPI, pointed at cascade with the two lines the README shows, rerank real
SciFact abstracts through their own public APIs; the order must be cascade's own search order.

The server is a real uvicorn on loopback; the documents are the abstracts of the test index (judged ones
for the claims and a spread of others); the ranking model is the shared cross-encoder. Each client gets
every document and must return cascade's search order for its claim (near-ties may swap), with relevance
scores that are the logistic of the cross-encoder's scores where the client exposes them. The server is
the session's (tests/rerank_fixtures.py); after the first client of a claim, the others are answered from
the result cache, which is what a real deployment does for repeated requests too.
"""

from __future__ import annotations

import pytest


pytest.register_assert_rewrite("tests.rerank_fixtures")  # its checks are assertions too
from tests.rerank_fixtures import NAME, assert_same_ranking, search_order  # noqa: E402

pytest_plugins = ["tests.rerank_fixtures"]  # the session's one server (see that module)

KEY = "any-key"  # clients insist on sending one; no key is configured for these routes, so any is accepted


CLAIMS = 2  # the clients take turns on two claims: each ranking is computed once, then answered from the cache


@pytest.fixture(scope="module")
def searched(served) -> dict[str, list[tuple[str, float]]]:
    """cascade's own search order (id, score) of every document of the index, per claim."""
    return {q: search_order(served.http, text, len(served.sample.docs)) for q, text, _ in served.sample.claims[:CLAIMS]}


@pytest.fixture
def url(served) -> str:
    return served.url


def claim(served, searched, k: int) -> tuple[str, list[str], list[str], list[tuple[str, float]]]:
    """(query, document texts, their ids, cascade's search order) for the k-th claim."""
    sample = served.sample
    qid, query, _ = sample.claims[k % CLAIMS]
    return query, [sample.text(d) for d in sample.docs], [d["_id"] for d in sample.docs], searched[qid]


def test_cohere_client_v2(served, searched, url):
    import cohere

    query, docs, ids, expected = claim(served, searched, 0)
    co = cohere.ClientV2(api_key=KEY, base_url=url)
    res = co.rerank(model=NAME, query=query, documents=docs, top_n=len(docs)).results
    assert_same_ranking([ids[r.index] for r in res], expected, [r.relevance_score for r in res])
    with pytest.raises(cohere.errors.NotFoundError) as err:  # an unknown model: Cohere's 404, naming the valid ones
        co.rerank(model="rerank-v3.5", query=query, documents=docs[:2])
    assert NAME in err.value.body["message"]


def test_cohere_client_v1(served, searched, url):
    import cohere

    query, docs, ids, expected = claim(served, searched, 1)
    co = cohere.Client(api_key=KEY, base_url=url)
    res = co.rerank(model=NAME, query=query, documents=docs, top_n=len(docs), return_documents=True).results
    assert_same_ranking([ids[r.index] for r in res], expected, [r.relevance_score for r in res])
    assert res[0].document.text == docs[res[0].index]


def test_langchain_cohere_rerank(served, searched, url):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    query, docs, ids, expected = claim(served, searched, 2)
    reranker = CohereRerank(base_url=url, model=NAME, cohere_api_key=KEY, top_n=len(docs))
    out = reranker.compress_documents([Document(page_content=t, metadata={"id": i}) for t, i in zip(docs, ids)],
                                      query)
    assert_same_ranking([d.metadata["id"] for d in out], expected, [d.metadata["relevance_score"] for d in out])


def _nodes(docs: list[str], ids: list[str]):
    from llama_index.core.schema import NodeWithScore, TextNode

    return [NodeWithScore(node=TextNode(text=t, id_=i), score=0.0) for t, i in zip(docs, ids)]


def test_llama_index_cohere_rerank(served, searched, url):
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    query, docs, ids, expected = claim(served, searched, 3)
    pp = CohereRerank(top_n=len(docs), model=NAME, api_key=KEY, base_url=url)
    out = pp.postprocess_nodes(_nodes(docs, ids), query_str=query)
    assert_same_ranking([n.node.node_id for n in out], expected, [n.score for n in out])


def test_llama_index_jinaai_rerank(served, searched, url):
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    query, docs, ids, expected = claim(served, searched, 0)
    pp = JinaRerank(top_n=len(docs), model=NAME, base_url=f"{url}/v1", api_key=KEY)
    out = pp.postprocess_nodes(_nodes(docs, ids), query_str=query)
    assert_same_ranking([n.node.node_id for n in out], expected, [n.score for n in out])


def test_llama_index_tei_rerank(served, searched, url):
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    query, docs, ids, expected = claim(served, searched, 1)
    pp = TextEmbeddingInference(top_n=len(docs), base_url=url)  # TEI clients send no model: the default one
    out = pp.postprocess_nodes(_nodes(docs, ids), query_str=query)
    assert_same_ranking([n.node.node_id for n in out], expected, [n.score for n in out])


def test_haystack_hugging_face_tei_ranker(served, searched, url):
    from haystack import Document
    from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker

    query, docs, ids, expected = claim(served, searched, 2)
    ranker = HuggingFaceTEIRanker(url=url, top_k=len(docs))
    out = ranker.run(query=query, documents=[Document(content=t, meta={"id": i}) for t, i in zip(docs, ids)])
    ranked = out["documents"]
    assert_same_ranking([d.meta["id"] for d in ranked], expected, [d.score for d in ranked])


@pytest.mark.parametrize("provider,path", [("cohere", "/v1/rerank"), ("jina", "/v1/rerank"), ("voyage", "/v1/rerank"),
                                           ("text-embeddings-inference", "/rerank")])
def test_rerankers_api_rankers_with_a_custom_url(served, searched, url, provider, path):
    from rerankers import Reranker

    query, docs, ids, expected = claim(served, searched, 3)
    ranker = Reranker(NAME, model_type=provider, api_key=KEY, url=url + path, verbose=0)
    res = ranker.rank(query=query, docs=docs, doc_ids=ids)
    got = res.results
    assert_same_ranking([r.document.doc_id for r in got], expected, [r.score for r in got])


def test_voyageai_client(served, searched, url):
    import voyageai

    query, docs, ids, expected = claim(served, searched, 0)
    vo = voyageai.Client(api_key=KEY, base_url=f"{url}/v1")
    res = vo.rerank(query=query, documents=docs, model=NAME, top_k=len(docs))
    assert_same_ranking([ids[r.index] for r in res.results], expected, [r.relevance_score for r in res.results])
    assert res.results[0].document == docs[res.results[0].index] and res.total_tokens > 0
    with pytest.raises(voyageai.error.InvalidRequestError) as err:  # a 4xx with FastAPI's `detail`, not retried
        vo.rerank(query=query, documents=[], model=NAME)
    assert "documents" in str(err.value)
