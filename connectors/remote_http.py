"""JSON over HTTP to model servers (rerank APIs, OpenAI-compatible LLM servers): one client per event loop,
a concurrency limit, and retries that never outlast the search's deadline.

A remote model is a dependency the cascade cannot fix, so this module's job is
to fail clearly and quickly: every error names the URL and the status; retries
are bounded and only for answers worth repeating (429, 5xx, refused or reset
connections; a request that timed out is not repeated, since it would only
wait as long again); a ``Retry-After`` is honoured when it fits the deadline.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


class RemoteAPIError(RuntimeError):
    """A remote model server failed or answered something unusable; ``status`` is the HTTP status if any."""

    def __init__(self, message: str, url: str, status: int | None = None):
        self.url, self.status = url, status
        super().__init__(message)


def retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare from model servers, and the backoff is a fine answer
        return None


def snippet(resp: Any, limit: int = 300) -> str:
    text = resp.text.strip().replace("\n", " ")
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")


class LoopClients:
    """One ``httpx.AsyncClient`` and semaphore per event loop: a pooled connection belongs to the loop that
    opened it, and the CLI runs several loops in turn."""

    def __init__(self, timeout_s: float, headers: dict[str, str], max_concurrency: int):
        self.timeout_s, self.headers, self.max_concurrency = timeout_s, headers, max_concurrency
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, Any, asyncio.Semaphore]] = {}

    def get(self) -> tuple[Any, asyncio.Semaphore]:
        import httpx

        loop = asyncio.get_running_loop()
        got = self._clients.get(id(loop))
        if got is None or got[0] is not loop:
            self._clients = {k: v for k, v in self._clients.items() if not v[0].is_closed()}
            got = self._clients[id(loop)] = (loop, httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s),
                                                                     headers=self.headers),
                                             asyncio.Semaphore(self.max_concurrency))
        return got[1], got[2]

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


def time_left(timeout_s: float, deadline: float | None) -> float:
    """Seconds one attempt may take: the timeout, or less when the search's deadline (monotonic) is nearer."""
    return timeout_s if deadline is None else min(timeout_s, deadline - time.monotonic())


async def post_json(clients: LoopClients, url: str, body: dict[str, Any], *, deadline: float | None,
                    retries: int, backoff_s: float, error: type[RemoteAPIError] = RemoteAPIError) -> Any:
    """POST ``body`` and return the response (status < 400); raises ``error`` naming the URL otherwise."""
    import httpx

    client, limit = clients.get()
    timeout_s = clients.timeout_s
    attempts = retries + 1
    for attempt in range(attempts):
        wait = backoff_s * (2 ** attempt)
        last = attempt + 1 >= attempts
        left = timeout_s
        try:
            async with limit:  # the time left is what remains once a slot is free, not when the request queued
                left = time_left(timeout_s, deadline)
                if left <= 0:
                    raise error(f"{url}: the search's deadline passed before attempt {attempt + 1}", url)
                resp = await client.post(url, json=body, timeout=left)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
            if not last and time_left(timeout_s, deadline) > wait:
                await asyncio.sleep(wait)
                continue
            raise error(f"{url}: {type(exc).__name__}: {exc} (after {attempt + 1} attempts)", url) from exc
        except httpx.TimeoutException as exc:
            raise error(f"{url}: no answer within {left:.3g} s ({type(exc).__name__})", url) from exc
        except httpx.HTTPError as exc:
            raise error(f"{url}: {type(exc).__name__}: {exc}", url) from exc
        status = resp.status_code
        if status == 429 or status >= 500:
            after = retry_after(resp.headers.get("Retry-After"))
            pause = min(after, timeout_s) if after is not None else wait
            if not last and time_left(timeout_s, deadline) > pause:
                await asyncio.sleep(pause)
                continue
            raise error(f"{url}: HTTP {status} after {attempt + 1} attempts: {snippet(resp)}", url, status)
        if status >= 400:
            raise error(f"{url}: HTTP {status}: {snippet(resp)}", url, status)
        return resp
    raise AssertionError("unreachable")  # pragma: no cover
