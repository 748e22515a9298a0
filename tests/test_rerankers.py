"""Pair scorers: token-level input building, fault isolation, and the rerank APIs against real local HTTP servers.

The remote backends are tested against ``RerankServer``: a real HTTP server on
127.0.0.1 that implements each API's request and response shape, scores by
word overlap (so the expected order is known), and can be told to fail, throttle,
sleep or enforce a batch limit. Requests cross a real socket and real JSON.
"""

from __future__ import annotations

import asyncio

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from cascade.errors import CascadeError
from cascade.query import Query
from cascade.models.pair_encoding import PairEncoder, clean_text, fallback_scores
from connectors.rerank_api import RemoteReranker, RerankAPIError

WORD = re.compile(r"[a-z0-9]+")


def overlap(query: str, doc: str) -> float:
    q = set(WORD.findall(query.lower()))
    return float(len(q & set(WORD.findall(doc.lower()))))


class RerankServer:
    """TEI ``POST /rerank``, Cohere ``POST /v1/rerank`` or Jina ``POST /v1/rerank``, on a free local port."""

    def __init__(self, kind: str, *, fail_first: int = 0, fail_status: int = 503, retry_after: str | None = None,
                 sleep_s: float = 0.0, max_batch: int | None = None, key: str | None = None, answer=None):
        self.kind, self.fail_first, self.fail_status, self.retry_after = kind, fail_first, fail_status, retry_after
        self.sleep_s, self.max_batch, self.key, self.answer = sleep_s, max_batch, key, answer
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    n = len(server.requests)
                server.respond(self, n, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def send(self, h, status: int, payload, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def respond(self, h, n: int, body: dict) -> None:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if n <= self.fail_first:
            extra = {"Retry-After": self.retry_after} if self.retry_after else {}
            return self.send(h, self.fail_status, {"error": "overloaded"}, extra)
        if self.key and h.headers.get("Authorization") != f"Bearer {self.key}":
            return self.send(h, 401, {"error": "invalid api key"})
        expected = "/rerank" if self.kind == "tei" else "/v1/rerank"
        if h.path != expected:
            return self.send(h, 404, {"error": f"no route {h.path}"})
        texts = body["texts"] if self.kind == "tei" else body["documents"]
        if self.max_batch and len(texts) > self.max_batch:  # TEI's max_client_batch_size answers 413 like this
            return self.send(h, 413, {"error": f"batch size {len(texts)} > maximum allowed batch size {self.max_batch}",
                                      "error_type": "validation"})
        if self.answer is not None:
            return self.send(h, 200, self.answer)
        scored = sorted(((overlap(body["query"], t), i) for i, t in enumerate(texts)), reverse=True)
        if self.kind == "tei":
            return self.send(h, 200, [{"index": i, "score": s} for s, i in scored])
        results = [{"index": i, "relevance_score": s / 10} for s, i in scored]
        if self.kind == "jina":
            return self.send(h, 200, {"model": body["model"], "usage": {"total_tokens": 1}, "results": results})
        return self.send(h, 200, {"id": "r-1", "results": results, "meta": {"api_version": {"version": "1"}}})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[RerankServer] = []

    def start(kind: str, **kw) -> RerankServer:
        servers.append(RerankServer(kind, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


QUERY = "solar panels store electricity"
DOCS = ["wind farms at sea", "solar panels on roofs", "batteries store solar electricity", "deep sea fish",
        "solar panels store electricity in batteries"]


def rscore(scorer, query, docs):
    """The remote scorer is async (retries and timeouts bounded by the search's deadline)."""
    return asyncio.run(scorer.score(query, docs))


# --- the three API shapes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tei", "cohere", "jina"])
def test_each_api_shape_sends_its_body_and_scores_in_input_order(serve, kind):
    srv = serve(kind, key="s3cret")
    scorer = RemoteReranker(kind, srv.url, "rr-model", api_key="s3cret", max_batch=16)
    scores = rscore(scorer, QUERY, DOCS)
    expected = np.array([overlap(QUERY, d) for d in DOCS]) / (1 if kind == "tei" else 10)
    np.testing.assert_allclose(scores, expected)
    assert list(np.argsort(-scores, kind="stable")) == [4, 2, 1, 0, 3]
    (req,) = srv.requests
    assert req["headers"]["Authorization"] == "Bearer s3cret"
    if kind == "tei":
        assert req["path"] == "/rerank"
        assert req["body"] == {"query": QUERY, "texts": DOCS, "raw_scores": True, "truncate": True}
    else:
        assert req["path"] == "/v1/rerank"
        want = {"model": "rr-model", "query": QUERY, "documents": DOCS, "top_n": len(DOCS)}
        if kind == "jina":
            want["return_documents"] = False
        assert req["body"] == want
    assert scorer.name == f"{kind}:rr-model@{srv.url}{req['path']}"


def test_a_url_with_its_own_path_is_used_as_given(serve):
    srv = serve("tei")
    with pytest.raises(RerankAPIError, match="HTTP 404"):
        rscore(RemoteReranker("tei", srv.url + "/custom/rerank", "m"), QUERY, DOCS[:2])
    assert srv.requests[0]["path"] == "/custom/rerank"


def test_requests_never_exceed_max_batch_and_scores_land_in_place(serve):
    srv = serve("cohere", max_batch=4)
    docs = [f"doc {i} " + ("solar " * (i % 3)) + ("electricity" if i % 2 else "") for i in range(11)]
    scores = rscore(RemoteReranker("cohere", srv.url, "m", max_batch=4), QUERY, docs)
    sizes = sorted(len(r["body"]["documents"]) for r in srv.requests)
    assert sizes == [3, 4, 4] and all(r["body"]["top_n"] == len(r["body"]["documents"]) for r in srv.requests)
    np.testing.assert_allclose(scores, [overlap(QUERY, d) / 10 for d in docs])
    # Without splitting, the same server refuses the request: the limit is real.
    with pytest.raises(RerankAPIError, match="HTTP 413"):
        rscore(RemoteReranker("cohere", srv.url, "m", max_batch=32), QUERY, docs)


# --- retries, timeouts, errors --------------------------------------------------------------------------------------

def test_retries_after_503_then_succeeds(serve):
    srv = serve("tei", fail_first=2, fail_status=503)
    scores = rscore(RemoteReranker("tei", srv.url, "m", retries=2, backoff_s=0.01), QUERY, DOCS)
    assert len(srv.requests) == 3
    np.testing.assert_allclose(scores, [overlap(QUERY, d) for d in DOCS])


def test_429_waits_for_retry_after(serve):
    srv = serve("jina", fail_first=1, fail_status=429, retry_after="0.3")
    t0 = time.monotonic()
    rscore(RemoteReranker("jina", srv.url, "m", retries=1, backoff_s=0.0), QUERY, DOCS)
    assert time.monotonic() - t0 >= 0.3 and len(srv.requests) == 2


def test_retries_never_wait_past_the_search_deadline(serve):
    """Regression: retries slept (time.sleep, in a thread) for their backoff whatever the search's deadline."""
    srv = serve("tei", fail_first=100, fail_status=503, retry_after="5")
    scorer = RemoteReranker("tei", srv.url, "m", retries=3, backoff_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(RerankAPIError, match="HTTP 503 after 1 attempts"):
        asyncio.run(scorer.score(QUERY, DOCS, deadline=time.monotonic() + 0.5))
    assert time.monotonic() - t0 < 1.5 and len(srv.requests) == 1


async def test_the_remote_client_does_not_block_the_event_loop(serve):
    """The rerank API client is async: other coroutines run while it waits for the server."""
    srv = serve("tei", sleep_s=0.3)
    scorer = RemoteReranker("tei", srv.url, "m")
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(tick())
    await scorer.score(QUERY, DOCS)
    t.cancel()
    await scorer.close()
    assert ticks >= 10


def test_gives_up_after_the_retries_naming_url_and_status(serve):
    srv = serve("cohere", fail_first=100, fail_status=502)
    scorer = RemoteReranker("cohere", srv.url, "m", retries=1, backoff_s=0.01)
    with pytest.raises(RerankAPIError) as e:
        rscore(scorer, QUERY, DOCS)
    assert len(srv.requests) == 2
    assert e.value.status == 502 and f"{srv.url}/v1/rerank" in str(e.value) and "HTTP 502 after 2 attempts" in str(e.value)


def test_client_errors_are_not_retried(serve):
    srv = serve("tei", key="right")
    with pytest.raises(RerankAPIError, match="HTTP 401: .*invalid api key") as e:
        rscore(RemoteReranker("tei", srv.url, "m", api_key="wrong", retries=3, backoff_s=0.01), QUERY, DOCS)
    assert e.value.status == 401 and len(srv.requests) == 1


def test_a_server_that_does_not_answer_times_out_without_retrying(serve):
    srv = serve("tei", sleep_s=1.5)
    scorer = RemoteReranker("tei", srv.url, "m", timeout_s=0.2, retries=3, backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(RerankAPIError) as e:
        rscore(scorer, QUERY, DOCS)
    assert time.monotonic() - t0 < 1.0
    assert f"{srv.url}/rerank: no answer within 0.2 s" in str(e.value)
    assert len(srv.requests) == 1


def test_connection_refused_is_retried_then_named(serve):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scorer = RemoteReranker("tei", f"http://127.0.0.1:{port}", "m", retries=2, backoff_s=0.01)
    with pytest.raises(RerankAPIError, match=rf"http://127.0.0.1:{port}/rerank: ConnectError.*after 3 attempts"):
        rscore(scorer, QUERY, DOCS)


@pytest.mark.parametrize("answer,message", [
    ([{"index": 0, "score": 1.0}], "scored 1 of the 2 documents"),
    ([{"index": 5, "score": 1.0}, {"index": 0, "score": 1.0}], "index 5 out of range"),
    ({"results": "nope"}, "unexpected answer"),
])
def test_unusable_answers_raise(serve, answer, message):
    srv = serve("tei", answer=answer)
    with pytest.raises(RerankAPIError, match=message):
        rscore(RemoteReranker("tei", srv.url, "m"), QUERY, DOCS[:2])


def test_documents_are_cleaned_and_empty_ones_are_not_sent(serve):
    srv = serve("tei")
    docs = [None, "solar panels", "", "bad \udcff bytes solar", "nul\x00byte electricity", "x" * 1_000_000, "   "]
    scorer = RemoteReranker("tei", srv.url, "m", max_chars=5000)
    scores = rscore(scorer, QUERY, docs)
    (req,) = srv.requests
    sent = req["body"]["texts"]
    assert sent[0] == "solar panels" and sent[1] == "bad \ufffd bytes solar" and sent[2] == "nul byte electricity"
    assert len(sent) == 4 and len(sent[3]) == 5000
    real = scores[[1, 3, 4, 5]]
    assert list(real) == [2.0, 1.0, 1.0, 0.0]
    assert np.isnan(scores[[0, 2, 6]]).all()  # not sent: the stage gives them its fallback (lowest - 1)


# --- config and the factory -----------------------------------------------------------------------------------------

def ce_config(**kw):
    from cascade.stages.cross_encoder import CrossEncoderConfig

    return CrossEncoderConfig(**{"type": "cross_encoder", "model": "rr-model", **kw})


def test_api_key_comes_from_the_named_environment_variable(serve, monkeypatch, settings):

    srv = serve("jina", key="from-env")
    cfg = ce_config(backend="jina", url=srv.url, api_key_env="CASCADE_TEST_RERANK_KEY", max_batch=2)
    monkeypatch.delenv("CASCADE_TEST_RERANK_KEY", raising=False)
    with pytest.raises(CascadeError, match="CASCADE_TEST_RERANK_KEY, which is not set"):
        cfg.load_runtime(settings)
    monkeypatch.setenv("CASCADE_TEST_RERANK_KEY", "from-env")
    scorer = cfg.load_runtime(settings)
    assert isinstance(scorer, RemoteReranker) and scorer.max_batch == 2
    rscore(scorer, QUERY, DOCS)
    assert len(srv.requests) == 3 and all(r["headers"]["Authorization"] == "Bearer from-env" for r in srv.requests)


@pytest.mark.parametrize("stage,error", [
    ({"backend": "tei"}, "backend tei needs `url`"),
    ({"url": "http://localhost:1"}, "url and api_key_env are for backends tei, cohere, jina"),
    ({"backend": "cohere", "url": "http://x", "api_key": "k"}, "never put secrets in the config"),
    ({"onnx_file": "model.int8.onnx"}, "`onnx_file` applies to backend onnx only"),
    ({"backend": "onnx", "dtype": "bfloat16"}, "`dtype` applies to backend torch only"),
    ({"backend": "triton", "url": "http://x"}, "backend"),
])
def test_config_errors_name_the_key(stage, error):
    from cascade.config import parse_config
    from cascade.errors import ConfigError
    from tests.conftest import TINY_CONFIG

    with pytest.raises(ConfigError, match=re.escape(error)):
        parse_config({**TINY_CONFIG, "stages": [{"type": "cross_encoder", "model": "m", **stage}]}, "tiny.yaml")


def test_dumped_configs_load_back():
    import yaml

    from cascade.config import dump_config, parse_config
    from tests.conftest import TINY_CONFIG

    for stage in ({"backend": "cohere", "url": "https://api.example/v1/rerank", "api_key_env": "K", "max_batch": 8},
                  {"backend": "onnx", "onnx_file": "model.int8.onnx"}, {"dtype": "float32"}):
        cfg = parse_config({**TINY_CONFIG, "stages": [{"type": "cross_encoder", "model": "m", **stage}]}, "t.yaml")
        assert parse_config(yaml.safe_load(dump_config(cfg)), "t.yaml") == cfg


# --- through Cascade.search: a failing remote stage degrades, a working one re-ranks ---------------------------------

async def test_a_failing_rerank_api_degrades_the_stage_and_keeps_the_fusion_order(serve, tiny_index):
    from cascade.controller import Cascade
    from cascade.builder import open_cascade
    from tests.conftest import tiny_config

    cfg, settings = tiny_index
    srv = serve("tei", fail_first=100, fail_status=500)
    staged = tiny_config(stages=[{"type": "cross_encoder", "backend": "tei", "model": "tei-model", "url": srv.url,
                                  "retries": 1, "backoff_s": 0.01, "rerank": 5}])
    res = await open_cascade(staged, settings).search(Query("solar electricity storage", size=10))
    assert res.degraded == ["cross_encoder"]
    ce = res.traces[-1]
    assert "HTTP 500 after 2 attempts" in ce.error and srv.url in ce.error and ce.scored == 0
    fusion = next(t for t in res.traces if t.name == "fusion")
    assert res.candidates.ids == fusion.ids and len(srv.requests) == 2

    srv_ok = serve("tei")
    staged = tiny_config(stages=[{"type": "cross_encoder", "backend": "tei", "model": "tei-model", "url": srv_ok.url,
                                  "rerank": 5, "max_batch": 2}])
    res = await open_cascade(staged, settings).search(Query("solar electricity storage", size=10))
    assert res.degraded == []
    top = res.candidates.stage_scores["cross_encoder"][:5]
    assert list(top) == sorted(top, reverse=True) and res.traces[-1].scored == 5
    assert max(len(r["body"]["texts"]) for r in srv_ok.requests) <= 2


# --- input building shared by the local backends (a real fast tokenizer, shipped with the default embedder) ---------

@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    from cascade.models.lookup import default_embedder_path

    return Tokenizer.from_file(str(Path(default_embedder_path()) / "tokenizer.json"))


NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def test_clean_text_makes_any_input_encodable():
    assert clean_text(None) == "" and clean_text(42) == "42"
    assert clean_text("a\x00b\x07c\n\td") == "a b c\n\td"
    assert clean_text("x\udcffy\ud800") == "x\ufffdy\ufffd"
    clean_text("x\udcffy").encode("utf-8")
    assert len(clean_text("z" * 1_000_000, max_chars=100)) == 100


def test_fallback_is_batch_minimum_minus_one():
    s = fallback_scores(np.array([2.0, np.nan, -1.5, np.inf]), np.array([True, False, True, True]))
    assert list(s) == [2.0, -2.5, -1.5, -2.5]
    assert list(fallback_scores(np.array([np.nan, np.nan]), np.array([False, False]))) == [0.0, 0.0]


def test_documents_are_cut_by_tokens_after_the_whole_query(tokenizer):
    enc = PairEncoder(tokenizer, 32, 0, NAMES)
    q = "does vitamin d prevent fractures"
    encs, ok = enc.encode(q, ["bone " * 500, "short", ""])
    assert list(ok) == [True, True, False] and encs[2] is None
    long = encs[0]
    assert len(long.ids) == 32
    assert tokenizer.decode(long.ids[: long.type_ids.index(1)]) == q  # the query survives whole, in front
    q_tokens = len(enc.single.encode(q, add_special_tokens=False).ids)  # (this tokenizer.json pads: use the copy)
    assert long.type_ids.count(1) == 32 - 1 - q_tokens - 1


def test_a_query_longer_than_half_the_budget_is_cut_to_half(tokenizer):
    enc = PairEncoder(tokenizer, 64, 0, NAMES)
    q = " ".join(f"word{i}" for i in range(200))
    encs, _ = enc.encode(q, ["a document " * 100])
    e = encs[0]
    q_tokens, d_tokens = e.type_ids.count(0) - 2, e.type_ids.count(1) - 1  # [CLS] q [SEP] | d [SEP]
    assert len(e.ids) == 64 and q_tokens <= (64 - 3) // 2 and d_tokens >= 64 - 3 - (64 - 3) // 2


def test_batches_are_sorted_by_token_length_and_padded_to_their_own_longest(tokenizer):
    enc = PairEncoder(tokenizer, 128, 0, NAMES)
    docs = ["w " * n for n in (3, 90, 10, 60, 1, 200)]
    encs, ok = enc.encode("q", docs)
    batches = enc.batches(encs, ok, 2)
    lengths = [len(encs[i].ids) for b in batches for i in b.index]
    assert lengths == sorted(lengths, reverse=True) and sorted(i for b in batches for i in b.index) == list(range(6))
    for b in batches:
        assert b.inputs["input_ids"].shape[1] == max(len(encs[i].ids) for i in b.index)
        assert set(b.inputs) == set(NAMES)


# --- the torch backend on the real cross-encoder --------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_scorer():
    import os

    from cascade.settings import Settings
    from cascade.models.torch_ce import load_cross_encoder

    models = os.environ.get("CASCADE_MODELS_DIR")
    if not models or not (Path(models) / "minilm-l6-ce-v1").is_dir():
        pytest.skip("CASCADE_MODELS_DIR with minilm-l6-ce-v1 is not available")
    return load_cross_encoder(["minilm-l6-ce-v1"], Settings(models_dir=Path(models)), max_length=128, batch_size=3,
                              dtype="float32")


POISON = ["Vitamin D supplements reduce the risk of fractures in older adults.",
          "vitamin d bone " * 100_000,  # about 1.5 MB
          "vitamin d\x00 and\x00 bones",
          "vitamin d \udcff\udcfe bones",
          None, "", "   ", 12345]


def poisoned_documents_check(scorer, exact: bool = True):
    """``exact``: scores do not depend on batch neighbours (float backends; int8 quantizes activations per batch)."""
    q = "does vitamin d prevent fractures"
    scores = scorer.score(q, POISON)
    real = scores[[0, 1, 2, 3, 7]]
    assert scores.shape == (len(POISON),) and np.isfinite(real).all()
    assert np.isnan(scores[[4, 5, 6]]).all()  # not scorable: NaN; the stage turns them into its fallback
    scores = fallback_scores(scores, np.isfinite(scores))
    assert scores[4] == scores[5] == scores[6] == real.min() - 1
    # The megabyte document is cut by tokens: the model sees exactly the tokens of its first few hundred characters.
    encs, _ = scorer.encoder.encode(q, [POISON[1], "vitamin d bone " * 300, "vitamin d  and  bones"])
    assert encs[0].ids == encs[1].ids and len(encs[0].ids) == scorer.max_length
    assert scorer.encoder.encode(q, [POISON[2]])[0][0].ids == encs[2].ids  # NUL bytes read as spaces
    if exact:
        prefix, spaced = scorer.score(q, ["vitamin d bone " * 300, "vitamin d  and  bones"])
        assert abs(scores[1] - prefix) < 1e-3 and abs(scores[2] - spaced) < 1e-3
    return scores


def test_torch_scorer_survives_poisoned_documents(torch_scorer):
    assert torch_scorer.dtype == "float32" and torch_scorer.max_length == 128
    poisoned_documents_check(torch_scorer)


def test_torch_scores_do_not_depend_on_batching(torch_scorer):
    docs = ["Vitamin D and calcium", "Fractures in the elderly are common. " * 20, "Unrelated text about stars",
            "vitamin d deficiency fracture risk meta-analysis", "a"]
    together = torch_scorer.score("vitamin d fractures", docs)
    alone = np.array([torch_scorer.score("vitamin d fractures", [d])[0] for d in docs])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_a_row_the_model_refuses_costs_only_itself(tokenizer):
    """A model call that fails on one row (here: any row holding the word "poison") is retried row by row."""
    from cascade.models.pair_encoding import score_pairs

    enc = PairEncoder(tokenizer, 64, 0, NAMES)
    bad = enc.single.encode("poison", add_special_tokens=False).ids[0]
    calls = []

    def model(inputs):
        calls.append(len(inputs["input_ids"]))
        if (inputs["input_ids"] == bad).any():
            raise RuntimeError("cannot score this row")
        return inputs["attention_mask"].sum(1).astype(float)  # longer pair, higher score

    docs = ["one two three", "poison here", "one", "one two three four five"]
    scores = score_pairs(enc, "q", docs, 4, model)
    assert calls[0] == 4 and sorted(calls[1:]) == [1, 1, 1, 1]  # the batch failed, then each row alone
    assert scores[0] < scores[3] and scores[2] < scores[0]
    assert np.isnan(scores[1])  # the refused row is not scored; the stage's fallback puts it last
    assert fallback_scores(scores, np.isfinite(scores))[1] == scores[[0, 2, 3]].min() - 1
    with pytest.raises(RuntimeError, match="cannot score"):  # nothing scorable: the model is broken, raise
        score_pairs(enc, "q", ["poison", "more poison"], 4, model)
