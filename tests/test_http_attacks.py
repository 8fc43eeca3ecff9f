"""Attacks on the agent's local HTTP API, sent over real sockets to a real agent process (and, for the header
deadline, to the same server code in-process with a short deadline). Each asserts the refusal, that the model
keeps answering, and that the agent's log holds no traceback."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from control_plane.procs import http_json
from edge_agent.http_api import MAX_BODY_BYTES
from edge_agent.http_server import HttpLimits, make_server
from tests.conftest import serving_cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def agent(tiny_int4, tmp_path_factory):
    with serving_cluster(tmp_path_factory.mktemp("http-attacks"), tiny_int4) as pair:
        yield pair


def still_serving(c, m1):
    status, body = c.chat("a1", max_tokens=4)
    assert status == 200 and body["model"] == m1.ref
    p, _ = c.agents["a1"]
    assert p.alive()
    assert "Traceback" not in p.log_path.read_text(errors="replace")


def raw(port: int, head: bytes, body_pieces=(), timeout: float = 30.0) -> bytes:
    """Sends a request head and body pieces (stopping if the server hangs up) and returns what came back."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head)
        for piece in body_pieces:
            try:
                s.sendall(piece)
            except OSError:   # the server answered and closed before the body was all sent
                break
        out = b""
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                break
            if not data:
                break
            out += data
            if b"\r\n\r\n" in out and b'"error"' in out:
                break
        return out
    finally:
        s.close()


def test_half_open_connections_do_not_starve_the_api(agent):
    c, m1 = agent
    _, port = c.agents["a1"]
    held = []
    try:
        for i in range(400):   # beyond the 256 open connections the agent allows
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 2:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")   # half a request head
            held.append(s)
        status, body = http_json(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert status == 200 and body == {"status": "alive"}
        still_serving(c, m1)
    finally:
        for s in held:
            s.close()


def test_oversized_body_is_refused_while_reading(agent):
    c, m1 = agent
    _, port = c.agents["a1"]
    declared = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % (400 << 20))
    reply = raw(port, declared, [b"{" + b" " * 65535] * 4)   # 256 KiB of the declared 400 MiB
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    reply = raw(port, chunked, [piece] * (MAX_BODY_BYTES // 0x10000 + 8))  # no length: cut at the limit
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"exceeds" in reply
    still_serving(c, m1)


def test_deeply_nested_json_is_a_400_naming_it(agent):
    c, m1 = agent
    _, port = c.agents["a1"]
    for body in (b"[" * 200_000 + b"]" * 200_000,
                 b'{"messages": ' + b"[" * 40 + b"]" * 40 + b"}"):
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        reply = raw(port, head + body)
        assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
        assert b"nested more deeply" in reply
    still_serving(c, m1)


def test_header_deadline_closes_a_silent_connection(tmp_path):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from control_plane.procs import free_port

    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
    port = free_port()
    server = make_server(app, "127.0.0.1", port, HttpLimits(header_timeout_s=0.3, max_connections=4))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        silent = socket.create_connection(("127.0.0.1", port), timeout=30)
        half = socket.create_connection(("127.0.0.1", port), timeout=30)
        half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert silent.recv(1) == b""   # closed by the server, not by this socket's own timeout
        assert half.recv(1) == b""
        ok = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"ok")
        flood = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(10)]
        ok = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")   # the oldest idle made room
        assert ok.startswith(b"HTTP/1.1 200"), ok
        for s in flood:
            s.close()
        silent.close()
        half.close()
    finally:
        server.should_exit = True
        t.join(10)
