"""The LLM stage against a real LLM server: `make test-llm` starts llama.cpp's (llama-cpp-python) with the
Qwen2.5-Coder-1.5B GGUF and sets CASCADE_LLM_URL; skipped otherwise. Both methods, on the tiny index."""

from __future__ import annotations

import asyncio
import os

import pytest

from cascade.builder import open_cascade
from cascade.query import Query
from tests.conftest import tiny_config

URL = os.environ.get("CASCADE_LLM_URL")
pytestmark = [pytest.mark.llm_live,
              pytest.mark.skipif(not URL, reason="CASCADE_LLM_URL is not set (`make test-llm` starts a llama.cpp server)")]


def stage(**kw):
    return {"type": "llm", "model": "qwen2.5-coder-1.5b-instruct", "rerank": 6, "max_move": 6,
            "remote": {"url": URL, "timeout_s": 120, "retries": 0, "max_concurrency": 1}, **kw}


def test_pointwise_judges_with_log_probabilities(tiny_index):
    _, settings = tiny_index
    c = open_cascade(tiny_config(stages=[stage()]), settings)
    res = asyncio.run(c.search(c.validate(Query(text="fish that glow in the deep ocean", size=6))))
    assert not res.degraded, res.traces[-1].error
    own = dict(zip(res.candidates.ids, res.candidates.stage_scores["llm"]))
    assert res.candidates.ids[0] == "d6" and own["d6"] > 0.5 > own["d3"], own  # deep sea fish vs protein folding


def test_listwise_returns_a_permutation_with_the_relevant_document_first(tiny_index):
    _, settings = tiny_index
    c = open_cascade(tiny_config(stages=[stage(method="listwise", window=6, stride=3, constrain="json_object")]),
                     settings)
    res = asyncio.run(c.search(c.validate(Query(text="fish that glow in the deep ocean", size=6))))
    assert not res.degraded, res.traces[-1].error
    assert sorted(res.candidates.ids) == sorted(next(t for t in res.traces if t.name == "fusion").ids[:6])
    assert res.candidates.ids[0] == "d6"
