"""uvicorn's httptools protocol with the connection limits it lacks: keep-alive from the start, header and body
deadlines, a header size cap.

Why this exists: uvicorn (0.54, httptools protocol) holds a connection for as
long as the client likes unless a response was just sent.

* Its keep-alive timer is only armed after a response, so a brand-new
  connection that sends nothing is held forever.
* It has no deadline for a request's line and headers, nor for its body, so a
  client sending one byte now and then ("slowloris") holds a connection, and
  a body that stops half-way holds the app in ``receive()``.
* Its httptools protocol has no limit on the size of the request head (h11's
  ``h11_max_incomplete_event_size`` does not apply to it): httptools buffers a
  header value until it ends, so an 8 MB header is accepted.

:class:`LimitedHttpToolsProtocol` adds, per connection (limits from
:func:`protocol_class`, i.e. ``CASCADE_HTTP_*``):

* keep-alive: a connection with no request in progress (new, or between
  requests) is closed after ``keepalive_s``, counted from when it became idle
  (bytes that start no request, such as stray CRLFs, do not reset it);
* header deadline: a request's line and headers must arrive within
  ``header_timeout_s`` of its first byte; else 408 and close;
* body deadline: its body must arrive within ``body_timeout_s`` of the end of
  its headers; else 408 and close, and the app waiting in ``receive()`` gets
  ``http.disconnect`` at once;
* header size: a request line plus headers over ``max_header_bytes``: 431 and
  close, as soon as the limit is crossed (not once the whole head arrived).
  Exact for a head that starts a read; one that starts inside a read, after
  another pipelined request, is counted from what the parser reported, so it
  may pass the limit by up to that one read before it is refused.

408/431 bodies are the service's error shape (``{"error": {"field": null,
"message", "type": "timeout" | "too_large", "limit"}}``) with ``connection:
close``; with pipelining they wait for the earlier requests' responses, which
still go out (answers must keep their order). After such an answer the server
shuts its sending side and discards what the client still sends for a short
while (a "lingering close", as nginx and Apache do): closing a socket with
unread data in it sends a TCP reset, and a reset can destroy the answer before
the client has read it.

Time the server itself stops reading (pipelined requests queued behind a
response, back-pressure on a large body, a client waiting for ``100
Continue``) is not held against the client: a deadline that falls then is
pushed back by its full length.

Closes are counted per reason in the class's ``closes`` counter and each one
is logged at debug level on the ``cascade.service.protocol`` logger.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from cascade.settings import Settings

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

log = logging.getLogger(__name__)

Phase = Literal["idle", "head", "body"]
"""Where the parser is: no request in progress, inside a request's line and headers, inside its body."""

CloseReason = Literal["idle", "keepalive", "header_timeout", "body_timeout", "header_too_large"]

LINGER_S = 2.0
"""After a 408/431, how long to keep discarding the client's bytes before closing (it usually closes first)."""


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


def _number(x: float) -> int | float:
    """``10.0`` as ``10`` for messages and the ``limit`` field; other values unchanged."""
    return int(x) if float(x).is_integer() else x


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus keep-alive from connection start, header/body deadlines and a header size cap.

    uvicorn instantiates the protocol class itself with ``(config, server_state, app_state)``, so the limits
    are class attributes; :func:`protocol_class` makes a subclass bound to a :class:`Settings`.
    """

    keepalive_s: ClassVar[float] = _default("http_keepalive_s")
    header_timeout_s: ClassVar[float] = _default("http_header_timeout_s")
    body_timeout_s: ClassVar[float] = _default("http_body_timeout_s")
    max_header_bytes: ClassVar[int] = _default("http_max_header_bytes")
    closes: ClassVar[Counter[str]] = Counter()
    """Connections this class closed, per :data:`CloseReason` (shared by all its connections; one event loop)."""

    def __init__(self, config: "Config", server_state: "ServerState", app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.keepalive_s  # uvicorn re-arms its own timer after responses with this
        self._phase: Phase = "idle"
        self._begun = 0  # requests whose first byte was parsed on this connection
        self._head_bytes = 0  # bytes of the current request's line and headers so far
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._rejected = False  # a 408/431 was decided: input is discarded from here on
        self._answer: bytes | None = None  # that answer, while earlier responses still have to go out first
        self._running: RequestResponseCycle | None = None  # the cycle whose app runs (one at a time)

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._sync_timers()  # a new connection is idle: the keep-alive clock starts now, not after a response

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._rejected and not self._response_pending():
            self.transport.close()
        else:
            super().shutdown()

    def data_received(self, data: bytes) -> None:
        """Feed the parser, at most the rest of the header allowance at a time while a head is incomplete.

        Slicing is what makes the size cap exact: httptools only reports a header once its value ended, so
        counting from ``on_header`` would buffer an 8 MB value before seeing it. Exceptions raised inside
        parser callbacks come back from ``feed_data`` as ``HttpParserCallbackError`` (a 400 in uvicorn), so
        the cap is checked here, between feeds, and answered with a real 431.
        """
        if self._rejected:
            return
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end and not self.transport.is_closing():
            if self._phase == "body":
                piece = view[pos:]
            else:
                used = self._head_bytes if self._phase == "head" else 0
                piece = view[pos:pos + self.max_header_bytes - used]
            phase, begun = self._phase, self._begun
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self._cancel_timers()
                    self.handle_websocket_upgrade()
                    return
                self._unsupported_upgrade_warning()
                break  # like uvicorn: the rest of this read is dropped, the request is served as plain HTTP
            except httptools.HttpParserError:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self._cancel_timers()
                self.send_400_response(msg)
                return
            pos += len(piece)
            if self._phase == "head":
                if self._begun == begun:  # the same head went on through all of this piece
                    self._head_bytes += len(piece)
                elif self._begun == begun + 1 and phase == "idle":  # it began at the start of the piece
                    self._head_bytes = len(piece)
                else:  # it began inside the piece, after another request: count what the parser reported
                    self._head_bytes = self._head_estimate()
                if self._head_bytes >= self.max_header_bytes:  # incomplete at the limit: it is over the limit
                    self._reject(431, "too_large", f"the request line and headers are over the limit of "
                                 f"{self.max_header_bytes} bytes", self.max_header_bytes, "header_too_large")
                    return
        self._sync_timers()

    # Parser callbacks (uvicorn's, plus where the request is)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "head"
        self._begun += 1
        self._head_bytes = 0
        self._cancel_timers()  # the new head's deadline starts now (armed after this feed)

    def on_headers_complete(self) -> None:
        self._phase = "body"
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = "idle"
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer, or starts the next pipelined request
        if self._rejected:
            self._unset_keepalive_if_required()
            if self._answer is not None and not self._response_pending() and not self.transport.is_closing():
                self._send_answer()  # the earlier responses are out: now the 408/431
            return
        self._sync_timers()  # ... which is wrong while the next request's head or body is arriving

    # Timers

    def _response_pending(self) -> bool:
        """A request was parsed and its response is still to be written (running, or queued behind another).

        A cycle marked disconnected writes nothing more, so it is not pending.
        """
        running = self._running
        return bool(self.pipeline) or (
            running is not None and not running.response_complete and not running.disconnected)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """uvicorn's, remembering the cycle: with pipelining, ``self.cycle`` is the newest request, not this one."""
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def _sync_timers(self) -> None:
        """Arm the one timer that fits where the connection is; cancel the others.

        Idle with no response pending: keep-alive (left running if already armed, so idle time adds up).
        In a head: the header deadline. In a body: the body deadline. Waiting for the app: none (the
        search timeout bounds that).
        """
        if self.transport is None or self.transport.is_closing() or self._rejected:
            self._cancel_timers()
            return
        if self._phase == "head":
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)
        elif self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._phase == "body":
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout_s, self._on_body_timeout)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._phase == "idle" and not self._response_pending():
            if self.timeout_keep_alive_task is None:
                self.timeout_keep_alive_task = self.loop.call_later(self.keepalive_s, self.timeout_keep_alive_handler)
        else:
            self._unset_keepalive_if_required()

    def _cancel_timers(self) -> None:
        for name in ("_header_timer", "_body_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)
        self._unset_keepalive_if_required()

    def _server_not_reading(self) -> bool:
        """We paused reading (pipelining, back-pressure) or the client waits for our 100 Continue."""
        return bool(self.flow is not None and self.flow.read_paused) or bool(
            self._phase == "body" and self.cycle is not None and self.cycle.waiting_for_100_continue)

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        if self.transport.is_closing() or self._rejected or self._phase != "idle" or self._response_pending():
            return
        self._count("keepalive" if self._begun else "idle")
        self.transport.close()

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self._rejected or self._phase != "head":
            return
        if self._server_not_reading():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)
            return
        self._reject(408, "timeout", f"the request line and headers did not arrive within "
                     f"{_number(self.header_timeout_s)} s", _number(self.header_timeout_s), "header_timeout")

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._rejected or self._phase != "body":
            return
        if self._server_not_reading():
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._on_body_timeout)
            return
        self._reject(408, "timeout", f"the request body did not arrive within {_number(self.body_timeout_s)} s "
                     f"of its headers", _number(self.body_timeout_s), "body_timeout")

    # Answers and closes

    def _head_estimate(self) -> int:
        """A lower bound on the current head's size from what the parser handed over (URL, complete headers)."""
        return len(self.url or b"") + 16 + sum(len(k) + len(v) + 4 for k, v in self.headers or ())

    def _reject(self, status: int, type_: str, message: str, limit: int | float, reason: CloseReason) -> None:
        """Answer ``status`` for the current request, then close; from now on the client's bytes are dropped.

        Answers go out in order, so while earlier requests' responses are pending the 408/431 waits for them
        (``on_response_complete``). For a stalled body: its app gets ``http.disconnect`` at once and writes
        nothing more (queued behind others, it never starts); if that app already began its own response,
        there is nothing to add and the connection is just closed.
        """
        self._rejected = True
        self._cancel_timers()
        self._count(reason)
        cycle = self.cycle
        if self._phase == "body" and cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                self.transport.close()
                return
            if self.pipeline and self.pipeline[0][0] is cycle:
                self.pipeline.popleft()  # queued, never started: the 408 is its answer
            cycle.disconnected = True
            cycle.message_event.set()
        body = json.dumps({"error": {"field": None, "message": message, "type": type_, "limit": limit}}).encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n\r\n", body])
        self._answer = b"".join(content)
        if self.flow is not None:
            self.flow.resume_reading()  # keep draining what the client sends: unread bytes at close() reset
        if not self._response_pending():
            self._send_answer()

    def _send_answer(self) -> None:
        """Write the 408/431, send FIN after it, then drop the client's bytes until it closes or LINGER_S passes.

        Closing at once could lose the answer: closing a socket with unread input sends a TCP reset, and a
        client receiving a reset may discard what it had not read yet (a "lingering close", as nginx does).
        """
        assert self._answer is not None
        self.transport.write(self._answer)
        self._answer = None
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def _count(self, reason: CloseReason) -> None:
        self.closes[reason] += 1
        if log.isEnabledFor(logging.DEBUG):
            peer = "%s:%d" % self.client if self.client else "?"
            log.debug("closing connection from %s: %s (closed so far: %s)", peer, reason, dict(self.closes))


def protocol_class(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """A :class:`LimitedHttpToolsProtocol` subclass with ``settings``' limits, for ``uvicorn.Config(http=...)``.

    Each call makes a new class with its own ``closes`` counter, so two servers in one process (tests) do
    not share counts.
    """

    class CascadeHttpProtocol(LimitedHttpToolsProtocol):
        keepalive_s = settings.http_keepalive_s
        header_timeout_s = settings.http_header_timeout_s
        body_timeout_s = settings.http_body_timeout_s
        max_header_bytes = settings.http_max_header_bytes
        closes: ClassVar[Counter[str]] = Counter()

    return CascadeHttpProtocol
