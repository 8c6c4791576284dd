"""The router's HTTP server under slow and greedy clients (a real uvicorn server with the router's protocol class,
real sockets): headers that never finish are cut off with a 408, connections past the cap get a 503 and close,
an unexpected error becomes one log line and a generic 500, and a body written straight to the connection yields
to `send` while the client lags."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Response
from starlette.types import Receive, Scope, Send

from cluster.router.connections import UNUSED_GRACE_S, body_writer, guarded_protocol
from cluster.router.errors import Unexpected
from cluster.router.routes import dialect_of
from worker.shared.procs import free_port


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(Unexpected, dialect_of=dialect_of)

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        raise ValueError("secret detail: sk-do-not-show")

    @app.get("/pieces")
    async def pieces() -> Response:
        return _Pieces()

    return app


PIECE, PIECES = 64 * 1024, 160  # 10 MiB: more than loopback's socket buffers hold for a client that waits
WAYS = {"direct": 0, "send": 0}


class _Pieces(Response):
    """A body of numbered pieces, each written straight to the connection when its BodyWriter is ready, else
    through `send` (which waits for the client), as the relay does."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        writer = body_writer(scope)
        assert writer is not None  # the router's protocol gives every request one
        for i in range(PIECES):
            piece = b"%08d" % i + b"x" * (PIECE - 8)
            way = "direct" if writer.ready() else "send"
            WAYS[way] += 1
            if way == "direct":
                writer.write(piece)
            else:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextlib.contextmanager
def _serving(header_timeout_s: float) -> Iterator[str]:
    """The router's protocol (4 connections at most) in a real uvicorn server on a thread."""
    port = free_port()
    config = uvicorn.Config(
        _app(),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http=guarded_protocol(max_connections=4, header_timeout_s=header_timeout_s),
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        running.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with _serving(header_timeout_s=0.5) as url:
        yield url


@pytest.fixture(scope="module")
def patient() -> Iterator[str]:
    """Headers get 10 s, as in the router: an unused connection outlives UNUSED_GRACE_S."""
    with _serving(header_timeout_s=10) as url:
        yield url


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def _unchunked(data: bytes) -> bytes:
    body, at = bytearray(), 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end], 16)
        if size == 0:
            return bytes(body)
        body += data[end + 2 : end + 2 + size]
        at = end + 2 + size + 2


def test_a_body_written_straight_out_waits_for_a_lagging_client_through_send_and_comes_whole(server: str) -> None:
    port = int(server.rpartition(":")[2])
    WAYS.update(direct=0, send=0)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /pieces HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1.0)  # the client lags: the kernel's buffers fill, then uvicorn's, and the connection pauses
        sock.settimeout(10)
        data = bytearray()
        while not data.endswith(b"\r\n0\r\n\r\n"):
            data += sock.recv(1 << 20)
    head, _, chunked = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
    body = _unchunked(chunked)
    assert [body[i : i + 8] for i in range(0, len(body), PIECE)] == [b"%08d" % i for i in range(PIECES)]
    assert WAYS["direct"] > 0 and WAYS["send"] > 0  # both ways were taken, and the body is whole and in order


def test_headers_that_never_finish_get_a_408_and_the_connection_closes(server: str) -> None:
    port = int(server.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        reply = _read_all(sock)  # returns when the server closes
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408") and b"No complete request headers" in reply
    assert 0.3 < waited < 3
    assert httpx.get(server + "/ok", timeout=5).status_code == 200


def test_connections_past_the_cap_get_a_503_and_the_server_keeps_serving(server: str) -> None:
    port = int(server.rpartition(":")[2])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(b"GET /ok HTTP/1.1\r\n")  # each one busy: a request under way
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            assert _read_all(extra).startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(server + "/ok", timeout=5).status_code == 200


def test_at_the_cap_the_connection_idle_longest_makes_room_for_a_request(patient: str) -> None:
    """Sockets that never send a request do not lock out a client with one: past UNUSED_GRACE_S the oldest idle
    one is cut. Within it, a new connection's request may be on its way: nothing is cut, the newcomer gets 503."""
    port = int(patient.rpartition(":")[2])
    held = []
    try:
        for _ in range(4):
            held.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(0.05)  # an order of age
        with socket.create_connection(("127.0.0.1", port)) as early:
            assert _read_all(early).startswith(b"HTTP/1.1 503")  # all four just opened: none cut
        time.sleep(UNUSED_GRACE_S)
        assert httpx.get(patient + "/ok", timeout=5).status_code == 200
        assert _read_all(held[0]) == b""  # cut to make room
        held[1].sendall(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert _read_all(held[1]).startswith(b"HTTP/1.1 200")  # the others still served
    finally:
        for sock in held:
            sock.close()


def test_an_unexpected_error_is_one_log_line_and_a_generic_500(server: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        response = httpx.get(server + "/boom", timeout=5)
    assert response.status_code == 500
    error = response.json()["error"]
    assert "incident" in error["message"] and "ValueError" not in response.text and "sk-do-not" not in response.text
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "incident" in lines[0].getMessage() and lines[0].exc_info is None
    assert error["message"].split("incident ")[1][:12] in lines[0].getMessage()
