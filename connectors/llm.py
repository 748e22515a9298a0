"""An OpenAI-compatible LLM client: ``/v1/chat/completions`` and ``/v1/completions``, async.

Hosted APIs, vLLM, llama.cpp's server and Ollama all answer these two routes
in the same shape, and all of them (OpenAI, vLLM, llama.cpp) return token
log-probabilities when asked, which is what the LLM stage's pointwise method
scores with. The transport (one client per event loop, a concurrency limit,
retries inside the search's deadline) is :mod:`connectors.remote_http`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from connectors.remote_http import LoopClients, RemoteAPIError, post_json, snippet

if TYPE_CHECKING:
    from cascade.endpoints import RemoteEndpoint

API = Literal["chat", "completions"]
Constrain = Literal["json_schema", "json_object", "none"]
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class LLMAPIError(RemoteAPIError):
    """The LLM server failed, refused, or answered in a shape this client cannot read."""


@dataclass
class Completion:
    """One answer: its text, the top log-probabilities of its first token (token -> logprob), and usage."""

    text: str
    first_top_logprobs: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


def endpoint_url(url: str, api: API) -> str:
    """``http://host:8080`` (or ``.../v1``) gets the route; a URL with another path of its own is used as it is."""
    path = urlparse(url).path.rstrip("/")
    if path in ("", "/v1"):
        return url.rstrip("/").removesuffix("/v1") + PATHS[api]
    return url


class LLMClient:
    """Chat or text completions against one model on one OpenAI-compatible server."""

    def __init__(self, url: str, model: str, *, api: API = "chat", api_key: str | None = None, timeout_s: float = 30.0,
                 retries: int = 1, backoff_s: float = 0.2, max_concurrency: int = 4):
        self.api, self.model = api, model
        self.url = endpoint_url(url, api)
        self.retries, self.backoff_s = retries, backoff_s
        headers = {"Accept": "application/json", "User-Agent": "cascade-rank"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.clients = LoopClients(timeout_s, headers, max_concurrency)

    @classmethod
    def from_endpoint(cls, endpoint: "RemoteEndpoint", model: str, api: API, who: str) -> "LLMClient":
        return cls(endpoint.url, model, api=api, api_key=endpoint.api_key(who), timeout_s=endpoint.timeout_s,
                   retries=endpoint.retries, backoff_s=endpoint.backoff_s, max_concurrency=endpoint.max_concurrency)

    async def complete(self, system: str, user: str, *, max_tokens: int, top_logprobs: int = 0,
                       json_schema: dict[str, Any] | None = None, constrain: Constrain = "json_schema",
                       deadline: float | None = None) -> Completion:
        """One deterministic answer (temperature 0) to ``system`` + ``user``; raises LLMAPIError on any failure.

        ``json_schema`` constrains the answer, in the server's dialect (``constrain``): ``json_schema`` is
        OpenAI's and vLLM's ``response_format``, ``json_object`` llama-cpp-python's (the schema inside it).
        """
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": 0, "stream": False}
        if self.api == "chat":
            body["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            if top_logprobs:
                body.update(logprobs=True, top_logprobs=top_logprobs)
            if json_schema is not None and constrain == "json_schema":
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "answer", "schema": json_schema, "strict": True}}
            elif json_schema is not None and constrain == "json_object":
                body["response_format"] = {"type": "json_object", "schema": json_schema}
        else:
            body["prompt"] = f"{system}\n\n{user}\n"
            if top_logprobs:
                body["logprobs"] = top_logprobs
        resp = await post_json(self.clients, self.url, body, deadline=deadline, retries=self.retries,
                               backoff_s=self.backoff_s, error=LLMAPIError)
        try:
            return self._parse(resp.json())
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError) as exc:
            raise LLMAPIError(f"{self.url}: unexpected answer ({type(exc).__name__}: {exc}): {snippet(resp)}",
                              self.url, resp.status_code) from exc

    def _parse(self, data: dict[str, Any]) -> Completion:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        if self.api == "chat":
            text = str((choice.get("message") or {}).get("content") or "")
            top: dict[str, float] = {}
            content = ((choice.get("logprobs") or {}).get("content")) or []
            if content:
                for alt in content[0].get("top_logprobs") or []:
                    top[str(alt["token"])] = float(alt["logprob"])
                top.setdefault(str(content[0].get("token", "")), float(content[0].get("logprob", -math.inf)))
        else:
            text = str(choice.get("text") or "")
            top = {}
            lp = choice.get("logprobs") or {}
            firsts = lp.get("top_logprobs") or []
            if firsts and isinstance(firsts[0], dict):
                top = {str(k): float(v) for k, v in firsts[0].items()}
        return Completion(text, {k: v for k, v in top.items() if math.isfinite(v)},
                          int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                          choice.get("finish_reason"))

    async def close(self) -> None:
        await self.clients.close()
