"""A deterministic local server that answers like OpenAI's chat completions API, for the LLM stage's tests.

It reads the prompts the stage sends (the query, the quoted documents and
their ids) and answers as a small model might: pointwise with ``yes``/``no``
and top log-probabilities from word overlap; listwise with a JSON ranking by
overlap. ``mode`` makes it misbehave the ways real servers and models do:
garbage, chatty or truncated answers, duplicate or unknown ids, obeying
instructions planted in documents, refusing, no log-probabilities, 500s,
hanging. Real HTTP on loopback (a thread of the test process), so the
client's timeouts, retries and concurrency are exercised for real.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DOC = re.compile(r'<document(?: id="(\w+)")?>\n(.*?)\n</document>', re.S)
QUERY = re.compile(r"Query: (.*?)\n")
WORD = re.compile(r"[a-z]+")


def overlap(query: str, doc: str) -> float:
    q = set(WORD.findall(query.lower()))
    d = set(WORD.findall(doc.lower()))
    return len(q & d) / max(len(q), 1)


class ChatServer:
    """``mode``: good | chatty | garbage | truncated | duplicate | unknown_ids | injected | refusal |
    no_logprobs | error500 | hang | fuzz (a random answer from ``fuzz_answers``)."""

    def __init__(self) -> None:
        self.mode = "good"
        self.requests: list[dict[str, Any]] = []
        self.fuzz_answers: list[str] = []
        self.rng = random.Random(7)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                server.requests.append(body)
                status, answer = server.answer(body)
                if status is None:  # hang: hold the connection without answering
                    time.sleep(30)
                    return
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ answers

    def answer(self, body: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
        mode = self.mode
        if mode == "hang":
            return None, {}
        if mode == "slow":  # answers, but 0.3 s late each time
            time.sleep(0.3)
        if mode == "error500":
            return 500, {"error": {"message": "the model crashed"}}
        user = body["messages"][-1]["content"]
        query = (QUERY.search(user) or [None, ""])[1]
        docs = DOC.findall(user)
        listwise = any(i for i, _ in docs)
        text, top = (self._ranking(query, docs) if listwise else self._judgment(query, docs[0][1] if docs else ""))
        if mode == "fuzz":
            text = self.rng.choice(self.fuzz_answers)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "length" if mode == "truncated" else "stop"}
        if body.get("logprobs") and top and mode not in ("no_logprobs", "refusal", "garbage"):
            choice["logprobs"] = {"content": [{"token": max(top, key=top.get), "logprob": max(top.values()),
                                               "top_logprobs": [{"token": k, "logprob": v} for k, v in top.items()]}]}
        return 200, {"id": "x", "object": "chat.completion", "model": body.get("model"), "choices": [choice],
                     "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": max(1, len(text) // 4)}}

    def _judgment(self, query: str, doc: str) -> tuple[str, dict[str, float]]:
        mode = self.mode
        p = min(max(overlap(query, doc), 0.02), 0.98)
        if mode == "injected" and re.search(r"(answer|say) yes|rank this (document )?first", doc, re.I):
            p = 0.99  # a model that obeys the document
        if mode == "refusal":
            return "I'm sorry, I cannot help with that.", {}
        if mode == "garbage":
            return "@@##!!", {}
        word = "yes" if p >= 0.5 else "no"
        text = {"chatty": f"Sure! My answer is: {word}.", "truncated": word[:1]}.get(mode, word)
        return text, {"yes": math.log(p), "no": math.log(1 - p), "maybe": math.log(0.001)}

    def _ranking(self, query: str, docs: list[tuple[str, str]]) -> tuple[str, dict[str, float]]:
        mode = self.mode
        ranked = [i for i, _ in sorted(docs, key=lambda d: -overlap(query, d[1]))]
        if mode == "injected":
            for i, text in docs:
                if re.search(r"rank this (document )?first|ignore (the|all)", text, re.I):
                    ranked = [i] + [r for r in ranked if r != i]
                fake = re.findall(r"\b(d[0-9a-f]{6}|doc\w+|\d+)\b", text)
                ranked = fake + ranked  # ids the document told it to output
        if mode == "duplicate":
            ranked = ranked[:2] + ranked[:2] + ranked[2:]
        if mode == "unknown_ids":
            ranked = ["dzzzzzz", "7", ranked[-1], "-1"] + ranked
        payload = json.dumps({"ranking": ranked})
        return {"chatty": f"Here is my ranking, as you asked:\n```json\n{payload}\n```\nLet me know!",
                "truncated": payload[: len(payload) // 2], "garbage": "no idea :)",
                "refusal": "I can't rank these."}.get(mode, payload), {}
