"""Rerank APIs over HTTP: Hugging Face text-embeddings-inference, Cohere and Jina (and servers that copy their shapes).

A failure raises (:func:`connectors.remote_http.post_json`: errors name the
URL and status, bounded retries that never wait past the search's deadline)
so the controller skips the stage and flags the response instead of
returning a half-scored list. Documents are cleaned first (lone
surrogates cannot even be encoded as JSON), empty ones are not sent, and a
request never carries more documents than the server accepts (``max_batch``).

Multimodal documents (``{"text": ..., "image": ...}``, the image a URL or base64 data) go to APIs that take
images in Jina's multimodal shape (jina-reranker-m0), which reads one modality per document: each entry
sent is ``{"text": ...}`` or ``{"image": ...}`` (the model card's examples; its ``compute_score`` takes one
``doc_type``). A document with both is sent as two entries, one each, and scores the better of the two,
so neither its picture nor its words are dropped. The image is passed on as given, never cut.

A 400 or 422 for a batch (something in it the server refuses) is not the whole batch's fault:
the batch is split in halves until the document the server refuses is alone; it gets no score (the
stage's fallback, below every scored document) and the others are scored. Only when no document at all
could be scored does the error fail the stage (flagged, previous order kept).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlparse

import numpy as np

from cascade.text import clean_text
from connectors.remote_http import LoopClients, RemoteAPIError, post_json, snippet

if TYPE_CHECKING:
    from cascade.endpoints import RemoteEndpoint

MAX_PARALLEL_REQUESTS = 4  # requests in flight at once: enough to hide round trips, few enough to be polite


class RerankAPIError(RemoteAPIError):
    """A rerank API failed or answered something unusable; ``status`` is the HTTP status when there was one."""


@dataclass(frozen=True)
class APIShape:
    path: str  # appended to a URL given without a path
    body: Callable[[str, list[str], str], dict[str, Any]]
    results: Callable[[Any], list[tuple[int, float]]]


def _tei_results(data: Any) -> list[tuple[int, float]]:
    return [(r["index"], r["score"]) for r in data]


def _cohere_results(data: Any) -> list[tuple[int, float]]:
    return [(r["index"], r["relevance_score"]) for r in data["results"]]


SHAPES: dict[str, APIShape] = {
    # text-embeddings-inference: raw logits (not sigmoids) keep the resolution at the top; truncate instead of 413.
    "tei": APIShape("/rerank", lambda q, docs, model: {"query": q, "texts": docs, "raw_scores": True, "truncate": True},
                    _tei_results),
    "cohere": APIShape("/v1/rerank", lambda q, docs, model: {"model": model, "query": q, "documents": docs,
                                                             "top_n": len(docs)}, _cohere_results),
    "jina": APIShape("/v1/rerank", lambda q, docs, model: {"model": model, "query": q, "documents": docs,
                                                           "top_n": len(docs), "return_documents": False},
                     _cohere_results),
}
IMAGES = ("jina",)  # APIs that accept a document's image
SPLIT_ON = (400, 422)  # a batch refused for something in it: split it to find the document (413: use max_batch)


def _entries(docs: list[Any]) -> tuple[list[Any], list[int]]:
    """What is sent for ``docs`` (cleaned; empty ones left out) and the document each entry scores.

    Plain strings while no document has an image; else Jina's multimodal entries, one modality each
    (a document with text and image gives two)."""
    multimodal = any(isinstance(d, dict) and d.get("image") for d in docs)
    out, owner = [], []
    for i, d in enumerate(docs):
        text, image = (d.get("text") or "", d.get("image")) if isinstance(d, dict) else (d, None)
        parts: list[Any] = [{"text": text} if multimodal else text] if text.strip() else []
        if image and multimodal:
            parts.append({"image": image})
        out += parts
        owner += [i] * len(parts)
    return out, owner


def endpoint_url(url: str, kind: str) -> str:
    """``http://host:8080`` gets the API's usual path; a URL with a path of its own is used as it is."""
    return url.rstrip("/") + SHAPES[kind].path if urlparse(url).path in ("", "/") else url


class RemoteReranker:
    """Scores pairs with a rerank API, asynchronously: retries and timeouts never outlast the search's deadline.

    One ``httpx.AsyncClient`` per event loop (a pooled connection belongs to
    the loop that opened it; the CLI runs several loops in turn), at most
    ``max_concurrency`` requests in flight. Documents that cannot be sent
    (empty after cleaning) come back as NaN: the stage gives them its
    fallback score over the whole window.
    """

    def __init__(self, kind: str, url: str, model: str, api_key: str | None = None, timeout_s: float = 10.0,
                 max_batch: int = 32, retries: int = 2, backoff_s: float = 0.2, max_chars: int = 8192,
                 max_concurrency: int = MAX_PARALLEL_REQUESTS):
        if kind not in SHAPES:
            raise ValueError(f"unknown rerank API {kind!r}; expected one of {', '.join(SHAPES)}")
        self.kind, self.model, self.shape = kind, model, SHAPES[kind]
        self.url = endpoint_url(url, kind)
        self.timeout_s, self.max_batch, self.retries, self.backoff_s = timeout_s, max_batch, retries, backoff_s
        self.max_chars, self.max_concurrency = max_chars, max_concurrency
        self.name = f"{kind}:{model}@{self.url}"
        self.stamp = f"remote:{kind}:{model}@{self.url}:{max_chars}"
        self.dtype = None
        self.headers = {"Accept": "application/json", "User-Agent": "cascade-rank"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.clients = LoopClients(timeout_s, self.headers, max_concurrency)

    @classmethod
    def from_endpoint(cls, kind: str, endpoint: "RemoteEndpoint", model: str, *, max_batch: int, max_chars: int,
                      who: str) -> "RemoteReranker":
        return cls(kind, endpoint.url, model, api_key=endpoint.api_key(who), timeout_s=endpoint.timeout_s,
                   max_batch=max_batch, retries=endpoint.retries, backoff_s=endpoint.backoff_s, max_chars=max_chars,
                   max_concurrency=endpoint.max_concurrency)

    async def score(self, query: str, docs: list[Any], deadline: float | None = None) -> np.ndarray:
        """One score per document, NaN for those not sent; ``deadline`` is ``time.monotonic()`` seconds.

        A document is a string, or ``{"text", "image"}`` for an API that takes images (see the module doc)."""
        if not docs:
            return np.zeros(0)
        query = clean_text(query, self.max_chars)
        entries, owner = _entries([self._clean(d) for d in docs])
        chunks = [list(range(s, min(s + self.max_batch, len(entries)))) for s in range(0, len(entries), self.max_batch)]
        refused: list[RerankAPIError] = []
        results = await asyncio.gather(*(self._isolating(query, [entries[i] for i in idx], deadline, refused)
                                         for idx in chunks))
        got = np.concatenate(results) if results else np.zeros(0)
        if refused and not np.isfinite(got).any():  # nothing could be scored: the stage fails, flagged
            raise refused[0]
        scores = np.full(len(docs), np.nan)
        for i, s in zip(owner, got):  # a document's best entry (text or image)
            if np.isfinite(s) and (np.isnan(scores[i]) or s > scores[i]):
                scores[i] = s
        return scores

    async def _isolating(self, query: str, entries: list[Any], deadline: float | None,
                         refused: list[RerankAPIError]) -> np.ndarray:
        """Scores of ``entries``; a batch refused with a 4xx is split until the refused entry is alone (NaN)."""
        try:
            return await self._post(query, entries, deadline)
        except RerankAPIError as exc:
            if exc.status not in SPLIT_ON:
                raise
            if len(entries) == 1:
                refused.append(exc)
                return np.full(1, np.nan)
        half = len(entries) // 2
        parts = await asyncio.gather(self._isolating(query, entries[:half], deadline, refused),
                                     self._isolating(query, entries[half:], deadline, refused))
        return np.concatenate(parts)

    def _clean(self, doc: Any) -> Any:
        if not isinstance(doc, dict):
            return clean_text(doc, self.max_chars)
        if self.kind not in IMAGES:
            raise RerankAPIError(f"{self.url}: the {self.kind} rerank API takes text only, not images", self.url)
        image = doc.get("image")
        return {"text": clean_text(doc.get("text"), self.max_chars),
                "image": image if isinstance(image, str) and image.strip() else None}

    async def _post(self, query: str, texts: list[Any], deadline: float | None) -> np.ndarray:
        body = self.shape.body(query, texts, self.model)
        resp = await post_json(self.clients, self.url, body, deadline=deadline, retries=self.retries,
                               backoff_s=self.backoff_s, error=RerankAPIError)
        return self._parse(resp, len(texts))

    def _parse(self, resp: Any, n: int) -> np.ndarray:
        try:
            pairs = self.shape.results(resp.json())
            out = np.full(n, np.nan)
            for i, s in pairs:
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
                    raise ValueError(f"index {i!r} out of range for {n} documents")
                out[i] = float(s)
        except (ValueError, KeyError, TypeError) as exc:
            raise RerankAPIError(f"{self.url}: unexpected answer ({type(exc).__name__}: {exc}): {snippet(resp)}",
                                 self.url, resp.status_code) from exc
        if np.isnan(out).any():
            raise RerankAPIError(f"{self.url}: scored {int((~np.isnan(out)).sum())} of the {n} documents sent",
                                 self.url, resp.status_code)
        return out

    async def close(self) -> None:
        await self.clients.close()
