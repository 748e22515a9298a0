"""Rerank APIs over HTTP: Hugging Face text-embeddings-inference, Cohere and Jina (and servers that copy their shapes).

A remote reranker is a dependency the cascade cannot fix, so this module's job
is to fail clearly and quickly: every error names the URL and the status,
retries are bounded (429, 5xx and refused connections only; a request that
timed out is not repeated, since it would only wait as long again) and never
wait past the search's deadline, and a
failure raises so the controller skips the stage and flags the response
instead of returning a half-scored list. Documents are cleaned first (lone
surrogates cannot even be encoded as JSON), empty ones are not sent, and a
request never carries more documents than the server accepts (``max_batch``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlparse

import numpy as np

from cascade.text import clean_text

if TYPE_CHECKING:
    from cascade.endpoints import RemoteEndpoint

MAX_PARALLEL_REQUESTS = 4  # requests in flight at once: enough to hide round trips, few enough to be polite


class RerankAPIError(RuntimeError):
    """A rerank API failed or answered something unusable; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, url: str, status: int | None = None):
        self.url, self.status = url, status
        super().__init__(message)


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


def endpoint_url(url: str, kind: str) -> str:
    """``http://host:8080`` gets the API's usual path; a URL with a path of its own is used as it is."""
    return url.rstrip("/") + SHAPES[kind].path if urlparse(url).path in ("", "/") else url


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare from rerank servers, and the backoff is a fine answer
        return None


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
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, Any, asyncio.Semaphore]] = {}

    @classmethod
    def from_endpoint(cls, kind: str, endpoint: "RemoteEndpoint", model: str, *, max_batch: int, max_chars: int,
                      who: str) -> "RemoteReranker":
        return cls(kind, endpoint.url, model, api_key=endpoint.api_key(who), timeout_s=endpoint.timeout_s,
                   max_batch=max_batch, retries=endpoint.retries, backoff_s=endpoint.backoff_s, max_chars=max_chars,
                   max_concurrency=endpoint.max_concurrency)

    def _client(self) -> tuple[Any, asyncio.Semaphore]:
        import httpx

        loop = asyncio.get_running_loop()
        got = self._clients.get(id(loop))
        if got is None or got[0] is not loop:
            self._clients = {k: v for k, v in self._clients.items() if not v[0].is_closed()}
            got = self._clients[id(loop)] = (loop, httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s),
                                                                     headers=self.headers),
                                             asyncio.Semaphore(self.max_concurrency))
        return got[1], got[2]

    async def score(self, query: str, docs: list[Any], deadline: float | None = None) -> np.ndarray:
        """One score per document, NaN for those not sent; ``deadline`` is ``time.monotonic()`` seconds."""
        if not docs:
            return np.zeros(0)
        query = clean_text(query, self.max_chars)
        texts = [clean_text(d, self.max_chars) for d in docs]
        ok = np.array([bool(t.strip()) for t in texts], dtype=bool)
        rows = np.flatnonzero(ok)
        chunks = [rows[s: s + self.max_batch] for s in range(0, len(rows), self.max_batch)]
        scores = np.full(len(docs), np.nan)
        results = await asyncio.gather(*(self._post(query, [texts[i] for i in idx], deadline) for idx in chunks))
        for idx, got in zip(chunks, results):
            scores[idx] = got
        return scores

    def _left(self, deadline: float | None) -> float:
        return self.timeout_s if deadline is None else min(self.timeout_s, deadline - time.monotonic())

    async def _post(self, query: str, texts: list[str], deadline: float | None) -> np.ndarray:
        import httpx

        client, limit = self._client()
        body = self.shape.body(query, texts, self.model)
        attempts = self.retries + 1
        for attempt in range(attempts):
            wait = self.backoff_s * (2 ** attempt)
            left = self._left(deadline)
            if left <= 0:
                raise RerankAPIError(f"{self.url}: the search's deadline passed before attempt {attempt + 1}", self.url)
            last = attempt + 1 >= attempts
            try:
                async with limit:
                    resp = await client.post(self.url, json=body, timeout=left)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                if not last and self._left(deadline) > wait:
                    await asyncio.sleep(wait)
                    continue
                raise RerankAPIError(f"{self.url}: {type(exc).__name__}: {exc} (after {attempt + 1} attempts)",
                                     self.url) from exc
            except httpx.TimeoutException as exc:
                raise RerankAPIError(f"{self.url}: no answer within {left:.3g} s ({type(exc).__name__})",
                                     self.url) from exc
            except httpx.HTTPError as exc:
                raise RerankAPIError(f"{self.url}: {type(exc).__name__}: {exc}", self.url) from exc
            status = resp.status_code
            if status == 429 or status >= 500:
                after = _retry_after(resp.headers.get("Retry-After"))
                pause = min(after, self.timeout_s) if after is not None else wait
                if not last and self._left(deadline) > pause:
                    await asyncio.sleep(pause)
                    continue
                raise RerankAPIError(f"{self.url}: HTTP {status} after {attempt + 1} attempts: {_snippet(resp)}",
                                     self.url, status)
            if status >= 400:
                raise RerankAPIError(f"{self.url}: HTTP {status}: {_snippet(resp)}", self.url, status)
            return self._parse(resp, len(texts))
        raise AssertionError("unreachable")  # pragma: no cover

    def _parse(self, resp: Any, n: int) -> np.ndarray:
        try:
            pairs = self.shape.results(resp.json())
            out = np.full(n, np.nan)
            for i, s in pairs:
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
                    raise ValueError(f"index {i!r} out of range for {n} documents")
                out[i] = float(s)
        except (ValueError, KeyError, TypeError) as exc:
            raise RerankAPIError(f"{self.url}: unexpected answer ({type(exc).__name__}: {exc}): {_snippet(resp)}",
                                 self.url, resp.status_code) from exc
        if np.isnan(out).any():
            raise RerankAPIError(f"{self.url}: scored {int((~np.isnan(out)).sum())} of the {n} documents sent",
                                 self.url, resp.status_code)
        return out

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for loop, client, _ in clients:
            if loop.is_closed():
                continue
            try:
                if loop is asyncio.get_running_loop():
                    await client.aclose()
            except RuntimeError:  # not on a running loop: the sockets go with the loop
                pass


def _snippet(resp: Any, limit: int = 300) -> str:
    text = resp.text.strip().replace("\n", " ")
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")
