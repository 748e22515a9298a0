"""Shared parts of the rerank API tests: a small real SciFact index with a cross-encoder profile, served once
for the whole session by uvicorn, and a local server in Jina's rerank shape for the remote-model profiles.

The index holds the abstracts judged for the first SciFact test claims (the set the shipped cross-encoder
never saw in training) and a fixed spread of other abstracts, about 40 in all, so a search with the
``default`` profile (the cross-encoder over every fused candidate) ranks every document of the index: the
order each rerank client must reproduce for the same documents. Read from CASCADE_DATA_DIR; the model from
CASCADE_MODELS_DIR; the tests are skipped (with the reason) when either is absent.

One server serves every rerank test module (``served``, session-scoped; the modules load this file with
``pytest_plugins``): building the index, loading the model and warming each profile up is most of their
time. Its settings are the union of what the modules need; a test that needs another value changes it on
the running service with :func:`changed` and restores it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

import httpx
import numpy as np
import pytest
import yaml

from cascade.stages import Reranker, StageConfigBase, register_stage
from cascade.stages.registry import STAGE_TYPES
from cascade.settings import Settings
from tests.llm_server import ChatServer

CLAIMS = 4  # test claims whose judged abstracts are in the index
SPREAD = 160  # every SPREAD-th other abstract of the corpus joins them (about 36 in all)
NAME = "scifact-mini"
SCORE_KEY = "score-route-key"  # the /score route's key (the other routes have none)


@dataclass
class Sample:
    claims: list[tuple[str, str, set[str]]]  # (id, text, judged abstract ids)
    docs: list[dict[str, Any]]  # corpus records: _id, title, text

    def text(self, doc: dict[str, Any]) -> str:
        """A document as one string, joined as the cross-encoder stage joins title and text."""
        return " ".join(p for p in (doc.get("title"), doc.get("text")) if p)


def shared(var: str) -> Path | None:
    v = os.environ.get(var)
    return Path(v) if v and Path(v).is_dir() else None


def scifact_sample() -> Sample:
    from cascade.datasets import corpus_file, iter_corpus, load_qrels, load_queries

    data, models = shared("CASCADE_DATA_DIR"), shared("CASCADE_MODELS_DIR")
    if data is None or not (data / "scifact").is_dir():
        pytest.skip("CASCADE_DATA_DIR with scifact/ is not available (make test sets it to ../shared/datasets)")
    if models is None or not (models / "minilm-l6-ce-v1").is_dir():
        pytest.skip("CASCADE_MODELS_DIR with minilm-l6-ce-v1 is not available (make test sets it to ../shared/models)")
    folder = data / "scifact"
    queries, qrels = load_queries(folder), load_qrels(folder, "test")
    claims = [(q, queries[q], {d for d, rel in qrels[q].items() if rel > 0}) for q in list(qrels)[:CLAIMS]]
    wanted = set().union(*(c[2] for c in claims))
    docs = [rec for i, (_, rec) in enumerate(iter_corpus(corpus_file(folder)))
            if rec["_id"] in wanted or i % SPREAD == 0]
    return Sample(claims, docs)


def index_config(**changes: Any) -> dict[str, Any]:
    """The default profile: the shared cross-encoder over every fused candidate; others for the error paths."""
    cfg: dict[str, Any] = {
        "index": NAME,
        "fields": {"title": {"type": "text"}, "text": {"type": "text"}},
        "embedder": {"model": "default", "max_length": 64},
        "retrievers": {"bm25": {"type": "bm25", "k": 100}, "knn": {"type": "knn", "k": 100}},
        "fusion": {"method": "rrf", "k": 60, "keep": 100},
        # float32: the search and the rerank calls batch the same texts differently; bfloat16 would blur ties.
        "stages": [{"type": "cross_encoder", "model": "minilm-l6-ce-v1", "fields": ["title", "text"],
                    "max_length": 256, "batch_size": 32, "dtype": "float32"}],
        "profiles": {
            "retrieval": {"description": "no stages: nothing to rerank with", "stages": []},
            "features": {"description": "a stage that reads index features",
                         "stages": [{"type": "test_reads_features"}]},
        },
        "limits": {"max_size": 100},
    }
    cfg.update(changes)
    return cfg


def build(tmp: Path, sample: Sample, **config_changes: Any) -> tuple[Settings, Path]:
    """The sample built into a real embedded index; (settings for the service, config folder)."""
    from cascade.config import parse_config
    from connectors.embedded import build_index

    cfg = index_config(**config_changes)
    configs = tmp / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / f"{NAME}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    settings = Settings(index_dir=tmp / "indexes", config_dir=configs, cache_dir=tmp / "cache",
                        data_dir=shared("CASCADE_DATA_DIR"), models_dir=shared("CASCADE_MODELS_DIR"))
    build_index(parse_config(cfg, f"{NAME}.yaml"), ((i + 1, dict(d)) for i, d in enumerate(sample.docs)), settings,
                source="scifact-sample")
    return settings, configs


def search_order(http: httpx.Client, query: str, n: int, profile: str | None = None) -> list[tuple[str, float]]:
    """(id, score) of every hit of cascade's own search, best first."""
    body: dict[str, Any] = {"query": query, "size": n}
    if profile:
        body["profile"] = profile
    r = http.post(f"/v1/indexes/{NAME}/search", json=body)
    assert r.status_code == 200, r.text
    return [(h["id"], h["score"]) for h in r.json()["hits"]]


def logit(p: float) -> float:
    p = min(max(p, 1e-15), 1 - 1e-15)
    return math.log(p / (1 - p))


def assert_same_ranking(got: list[str], expected: list[tuple[str, float]], got_scores: list[float] | None = None,
                        tol: float = 2e-3) -> None:
    """``got`` (ids, best first) is ``expected``'s order; two documents may swap only if their scores tie within
    ``tol`` (scores of one text can differ in the last digits between batch compositions). ``got_scores``:
    the client's (0, 1) relevance scores, which must be the logistic of the expected scores."""
    want = [i for i, _ in expected]
    assert sorted(got) == sorted(want), "the ranked documents differ from the searched ones"
    score = dict(expected)
    for pos, (a, b) in enumerate(zip(got, want)):
        if a != b:
            assert abs(score[a] - score[b]) <= tol, f"rank {pos + 1}: got {a} ({score[a]:.5f}), cascade's search " \
                                                   f"ranks {b} ({score[b]:.5f}) there"
    if got_scores is not None:
        np.testing.assert_allclose([logit(s) for s in got_scores], [score[i] for i in got], atol=tol, rtol=0)


class RemoteModels(ChatServer):
    """Jina's rerank API (``POST /v1/rerank``) on a free local port, taking documents as jina-reranker-m0 does:
    a string, or an object with exactly one of ``text`` or ``image``. A batch with any other document, or
    with an image that is neither an http(s) URL nor base64 data (the model could not fetch it), is refused
    whole with a 400, as a real server refuses a request. Scores: 10 for an image whose name holds the
    query's first word, else the number of words a text shares with the query, so the expected order is
    known. Model ``slow`` answers after ``delay_s``. Records every request body (``requests``)."""

    IMAGE = re.compile(r"^(https?://\S+|data:image/[a-z]+;base64,[A-Za-z0-9+/=]+)$")

    def __init__(self) -> None:
        super().__init__()
        self.delay_s = 0.0  # set by the tests that need a slow model (warm-up searches call it too)

    def answer(self, body: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
        if body.get("model") == "slow":
            time.sleep(self.delay_s)
        words = set(body["query"].lower().split())
        first = body["query"].lower().split()[0]
        results = []
        for i, d in enumerate(body["documents"]):
            if isinstance(d, dict) and (len(d) != 1 or not set(d) <= {"text", "image"}):
                return 400, {"detail": f"documents.{i}: an object holds one of text or image, got {sorted(d)}"}
            if isinstance(d, dict) and "image" in d and not self.IMAGE.match(d["image"]):
                return 400, {"detail": f"documents.{i}.image: cannot fetch {d['image'][:40]!r}"}
            text = d if isinstance(d, str) else d.get("text", "")
            s = 10.0 if isinstance(d, dict) and first in d.get("image", "").lower() else 0.0
            results.append({"index": i, "relevance_score": s + len(words & set(text.lower().split()))})
        results.sort(key=lambda r: -r["relevance_score"])
        return 200, {"model": body["model"], "usage": {"total_tokens": 1}, "results": results}

    def sent(self, model: str) -> list[dict[str, Any]]:
        return [b for b in self.requests if b.get("model") == model]


@dataclass
class Served:
    """The running service of the session: an HTTP client on it, its URL, the app, the sample, the remote."""

    http: httpx.Client
    url: str
    app: Any
    sample: Sample
    remote: RemoteModels

    @property
    def state(self) -> Any:
        return self.app.state.service

    @property
    def entry(self) -> Any:
        return self.state.registry.entries[NAME]


@contextlib.contextmanager
def changed(obj: Any, **values: Any) -> Iterator[None]:
    """Set attributes of a running service's object (its settings, an index entry) and restore them after."""
    old = {k: getattr(obj, k) for k in values}
    for k, v in values.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Iterator[Served]:
    """The one rerank server of the session (see the module doc). Its profiles: ``default`` (the cross-encoder
    on title and text), ``retrieval`` and ``features`` (refused), ``remote-down`` (a remote model that is down),
    ``multimodal`` and ``slow`` (remote models in Jina's shape on :class:`RemoteModels`)."""
    from pydantic import SecretStr

    from cascade.service import create_app
    from cascade.service.registry import ConfigSource
    from tests.service_fixtures import ServerThread, wait_until

    sample = scifact_sample()
    remote = RemoteModels()
    profiles = {
        "retrieval": {"stages": []},
        "features": {"stages": [{"type": "test_reads_features"}]},
        "remote-down": {"stages": [{"type": "cross_encoder", "backend": "tei", "model": "m",
                                    "url": "http://127.0.0.1:9", "retries": 0, "timeout_s": 2}]},
        "multimodal": {"stages": [{"type": "cross_encoder", "backend": "jina", "model": "jina-reranker-m0",
                                   "url": remote.url, "retries": 0, "image_field": "image", "fields": ["text"]}]},
        "slow": {"stages": [{"type": "cross_encoder", "backend": "jina", "model": "slow", "url": remote.url,
                             "retries": 0, "fields": ["text"]}]},
    }
    fields = {"title": {"type": "text"}, "text": {"type": "text"}, "image": {"type": "keyword"}}
    settings, configs = build(tmp_path_factory.mktemp("rerank"), sample, profiles=profiles, fields=fields)
    settings = settings.model_copy(update={
        "rerank_prefix": "/cascade", "rerank_max_request_bytes": 512 * 1024,
        "rerank_api_keys": {"/score": SecretStr(SCORE_KEY)},
        "rerank_models": {"rerank-english-v3.0": f"{NAME}:default"},
        "rerank_max_concurrent": 1, "rerank_max_queued": 1})  # a small pool, so that overload is reachable
    app = create_app(settings, ConfigSource(directory=configs))
    try:
        with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            wait_until(lambda: http.get("/readyz").json()["status"] != "loading", 180, what="/readyz")
            yield Served(http, server.url, app, sample, remote)
    finally:
        remote.close()


class ReadsFeaturesConfig(StageConfigBase):
    """A test-only stage that declares it reads index features (as LTR does), to check that such profiles are
    refused by the rerank routes. It never runs there."""

    reads_features: ClassVar[bool] = True
    type: Literal["test_reads_features"] = "test_reads_features"

    def build(self, ctx: Any) -> "ReadsFeaturesStage":
        return ReadsFeaturesStage(self)


class ReadsFeaturesStage(Reranker):
    def __init__(self, cfg: ReadsFeaturesConfig):
        self.configure(cfg)

    async def score(self, query, candidates, deadline) -> np.ndarray:
        return np.zeros(len(candidates))

    async def close(self) -> None:
        return None


if "test_reads_features" not in STAGE_TYPES:
    register_stage(ReadsFeaturesConfig)
