"""Slow and oversized clients against a real uvicorn server (raw sockets), with short connection limits.

uvicorn alone holds an idle new connection, a slow head and a stalled body
for as long as the client likes, and accepts an 8 MB header; the service's
protocol (``cascade.service.protocol``) closes them after CASCADE_HTTP_*.
Normal keep-alive reuse and pipelining must keep working. Every socket wait
is bounded, so a server that does not enforce a limit fails a test rather
than hanging it.
"""

from __future__ import annotations

import json
import select
import socket
import time

import httpx
import pytest

from cascade.service import create_app
from cascade.service.registry import ConfigSource
from tests.service_fixtures import (  # noqa: F401  (fixtures)
    ServerThread, make_settings, tiny_index_dir, wait_until, write_config,
)

KEEPALIVE_S, HEADER_S, BODY_S, MAX_HEADER = 0.5, 1.0, 1.0, 4096
SLACK_S = 1.0  # scheduling slack on a busy CI machine
SEARCH = "/v1/indexes/tiny/search"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_index_dir):
    tmp = tmp_path_factory.mktemp("slow")
    write_config(tmp / "configs")
    settings = make_settings(tmp, tiny_index_dir, http_keepalive_s=KEEPALIVE_S, http_header_timeout_s=HEADER_S,
                             http_body_timeout_s=BODY_S, http_max_header_bytes=MAX_HEADER)
    app = create_app(settings, ConfigSource(directory=tmp / "configs"))
    with ServerThread(app, settings) as srv:
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            wait_until(lambda: http.get("/readyz").json()["status"] == "ready", 120, what="/readyz")
        yield srv


def connect(server: ServerThread, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s)


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``timeout_s`` passes (False)."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def split_response(buf: bytearray) -> tuple[int, dict[str, str], bytes] | None:
    """The first whole HTTP/1.1 response (with a Content-Length) in ``buf``, removed from it; None if incomplete."""
    head, sep, rest = bytes(buf).partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), f"not an HTTP response: {bytes(buf[:200])!r}"
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    if len(rest) < length:
        return None
    buf[:] = rest[length:]
    return int(lines[0].split(" ")[1]), headers, rest[:length]


def read_response(sock: socket.socket, buf: bytearray, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock`` (``buf`` holds bytes read before; what follows the response stays in it)."""
    deadline = time.monotonic() + timeout_s
    while (got := split_response(buf)) is None:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection inside a response (got {bytes(buf)!r})"
        buf += chunk
    return got


def parse(data: bytes) -> tuple[int, dict[str, str], dict]:
    """The one JSON response the server sent before closing."""
    buf = bytearray(data)
    got = split_response(buf)
    assert got is not None and not buf, f"not exactly one whole response: {data[:300]!r}"
    return got[0], got[1], json.loads(got[2])


def closes(server: ServerThread) -> dict[str, int]:
    return dict(getattr(server.server.config.http_protocol_class, "closes", {}))


def test_idle_new_connection_is_closed_after_keepalive(server):
    sock = connect(server)
    t0 = time.monotonic()
    data, closed = read_until_closed(sock, KEEPALIVE_S + SLACK_S)
    took = time.monotonic() - t0
    sock.close()
    assert closed, f"a connection that sent nothing was still open after {took:.1f} s (keep-alive {KEEPALIVE_S} s)"
    assert data == b"" and took >= KEEPALIVE_S * 0.8
    assert closes(server).get("idle", 0) >= 1


def test_slow_header_gets_408_and_close(server):
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    t0 = time.monotonic()
    data, closed = b"", False
    while not closed and time.monotonic() - t0 < HEADER_S + SLACK_S:
        try:
            sock.sendall(b"a")  # one header byte per 0.2 s, never ending the header
        except (BrokenPipeError, ConnectionResetError):
            break
        more, closed = read_until_closed(sock, 0.2)
        data += more
    more, closed = read_until_closed(sock, 0.5) if not closed else (b"", True)
    took = time.monotonic() - t0
    sock.close()
    assert data + more, f"no answer to a header trickling for {took:.1f} s (header timeout {HEADER_S} s)"
    status, headers, body = parse(data + more)
    assert status == 408 and headers["connection"] == "close" and closed
    assert body == {"error": {"field": None, "message": "the request line and headers did not arrive within 1 s",
                              "type": "timeout", "limit": 1}}
    assert HEADER_S * 0.8 <= took <= HEADER_S + SLACK_S


def test_partial_body_gets_408_and_close(server):
    sock = connect(server)
    sock.sendall(b"POST " + SEARCH.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n" + b'{"query": ')  # 10 of 100 bytes, then nothing
    t0 = time.monotonic()
    data, closed = read_until_closed(sock, BODY_S + SLACK_S)
    took = time.monotonic() - t0
    sock.close()
    assert data, f"no answer to a body stalled for {took:.1f} s (body timeout {BODY_S} s)"
    status, headers, body = parse(data)
    assert status == 408 and headers["connection"] == "close" and closed
    assert body["error"]["type"] == "timeout" and body["error"]["limit"] == 1 and "body" in body["error"]["message"]
    assert BODY_S * 0.8 <= took <= BODY_S + SLACK_S
    assert closes(server).get("body_timeout", 0) >= 1


def test_8mb_header_gets_431_long_before_it_is_sent(server):
    total, chunk = 8 << 20, b"a" * (64 << 10)
    sock = connect(server, timeout_s=2)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent, data = 0, b""
    while sent < total:
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            break
        sent += len(chunk)
        if select.select([sock], [], [], 0)[0]:
            break
        time.sleep(0.005)  # let the server's thread run (the GIL), as a real network would
    at = sent
    data, closed = read_until_closed(sock, 2.0)
    sock.close()
    assert data, f"no answer after {at} bytes of one header (limit {MAX_HEADER})"
    status, headers, body = parse(data)
    assert status == 431 and headers["connection"] == "close" and closed
    assert body["error"] == {"field": None, "type": "too_large", "limit": MAX_HEADER,
                             "message": f"the request line and headers are over the limit of {MAX_HEADER} bytes"}
    assert at < total // 8, f"431 came only after {at} of {total} bytes"
    assert closes(server).get("header_too_large", 0) >= 1


def test_keepalive_client_reuses_its_connection_then_is_closed_when_idle(server):
    sock = connect(server)
    buf = bytearray()
    for i, query in enumerate(["deep ocean fish", "gene expression", "deep ocean fish"]):
        body = json.dumps({"query": query, "size": 3}).encode()
        sock.sendall(b"POST " + SEARCH.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        status, headers, payload = read_response(sock, buf)
        assert status == 200 and headers.get("connection") != "close", payload
        assert json.loads(payload)["hits"], payload
        if i < 2:
            time.sleep(KEEPALIVE_S / 2)  # a pause shorter than keep-alive keeps the connection
    t0 = time.monotonic()
    data, closed = read_until_closed(sock, KEEPALIVE_S + SLACK_S)
    took = time.monotonic() - t0
    sock.close()
    assert closed and data == b"" and bytes(buf) == b"", (took, data, bytes(buf))
    assert KEEPALIVE_S * 0.8 <= took <= KEEPALIVE_S + SLACK_S


def test_pipelined_requests_are_both_answered(server):
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    buf = bytearray()
    for _ in range(2):
        status, _, body = read_response(sock, buf)
        assert status == 200 and json.loads(body) == {"status": "ok"}
    sock.close()


def test_head_near_the_limit_with_a_large_body_in_one_write_is_served(server):
    """The cap counts the head only: a big body (or a head just under the cap) in the same read is fine."""
    body = json.dumps({"query": "deep ocean fish", "size": 3}).encode() + b" " * (200 << 10)
    head = (b"POST " + SEARCH.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nX-Pad: ")
    head += b"p" * (MAX_HEADER - 200 - len(head)) + b"\r\n\r\n"
    sock = connect(server)
    sock.sendall(head + body)
    status, _, payload = read_response(sock, bytearray())
    sock.close()
    assert status == 200 and json.loads(payload)["hits"][0]["id"] == "d6", payload
