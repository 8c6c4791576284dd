"""The router's HTTP connections, guarded: at most `max_connections` open at once, and a client gets
HEADER_TIMEOUT_S to send a request's headers (a slow-loris client holding sockets open without ever finishing a
request is closed). The body has its own deadline where it is read (cluster/router/intake.py). At shutdown a
connection ends only at a request boundary (see `shutdown`).

uvicorn closes idle keep-alive connections itself, but has neither a cap on connections nor a deadline for a
request's headers; this is its httptools protocol with both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from cluster.router.logformat import Sparse

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
_SLOW = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"


def _reply(head: bytes, message: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})
    return head + b"content-length: %d\r\n\r\n" % len(body) + body.encode()


UNUSED_GRACE_S = 1.0  # a new connection's request is on its way: it may be cut to make room only after this


def guarded_protocol(max_connections: int, header_timeout_s: float = HEADER_TIMEOUT_S) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` setting."""
    refusals = Sparse(log)

    class Guarded(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _stopping = False
        _idle_since: float | None = None  # no request on it since then (monotonic); None: one is under way
        _used = False  # it has carried a request

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections and not self._evict_idle():
                refusals.warning("cap", "connection refused: %d busy connections is the limit", max_connections)
                transport.write(_reply(_BUSY, "Too many open connections to this endpoint; try again shortly."))
                transport.close()
                return
            self._idle_since = self.loop.time()
            self._arm()

        def _evict_idle(self) -> bool:
            """At the cap, the connection idle longest makes room, as a web server reuses its idle keep-alive
            connections, so idle sockets cannot lock out clients with a request to send: one kept alive after a
            request, or one that has sent nothing for UNUSED_GRACE_S (a client's request may be in flight on a
            newer one). False when none is (every other connection busy, or just opened)."""
            now = self.loop.time()
            others = [c for c in self.connections if isinstance(c, Guarded) and c is not self]
            idle = [c for c in others if c._evictable(now)]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c._idle_since or 0.0)
            oldest._idle_since = None
            oldest.transport.abort()
            return True

        def _evictable(self, now: float) -> bool:
            since = self._idle_since
            if since is None or self.transport.is_closing():
                return False
            return self._used or now - since >= UNUSED_GRACE_S

        def data_received(self, data: bytes) -> None:
            self._idle_since = None
            if self._timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the next request on a kept-alive connection starts
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._used = True
            if not self.pipeline:
                self._idle_since = self.loop.time()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            if self.cycle is not None:
                extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
                extensions[BODY_WRITER] = BodyWriter(self.cycle)
                if self._stopping:
                    self.cycle.keep_alive = False  # answered, with `Connection: close`, then closed

        def shutdown(self) -> None:
            """The router stops: a connection is closed only at a request boundary, and said so. An answer not yet
            begun says `Connection: close`; one already streaming said keep-alive, so its connection stays open
            after it like an idle one. An idle one stays open for its keep-alive time, so that a request its client
            is sending right now (on a reused connection) is answered with `Connection: close` rather than cut —
            closing it at once loses such requests. Idle to the end, it is cut then, not closed politely: with TLS
            a polite close waits up to 30 s for the client's answer (Python's TLS shutdown timeout)."""
            self._stopping = True
            if self.cycle is not None and not self.cycle.response_complete:
                if not self.cycle.response_started:
                    super().shutdown()
            elif self.timeout_keep_alive_task is None:  # no request yet: as long as a kept-alive wait
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

        def timeout_keep_alive_handler(self) -> None:
            if self._stopping and self.transport.get_write_buffer_size() == 0:
                self.transport.abort()
            else:
                super().timeout_keep_alive_handler()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.transport.write(_reply(_SLOW, f"No complete request headers within {header_timeout_s:g} s."))
                self.transport.close()

    Guarded.__name__ = "Guarded"
    return Guarded


BODY_WRITER = "orchard.body_writer"  # the ASGI scope's extension a request's BodyWriter is under


class BodyWriter:
    """Writes the next bytes of a response body that is streaming, straight to its connection, framed as uvicorn's
    own `send` frames them (a chunk of the chunked encoding) — without the middleware and the ASGI plumbing a
    message takes, which cost more than the write itself for one token. Only when the write would go out at once:
    the response began and is not finished, and the connection takes data now (otherwise `ready` is False, and the
    bytes go through `send`, which waits for the client). Past the middleware: only for a body none of them
    rewrites (cluster/router/passthrough.py)."""

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle

    def ready(self) -> bool:
        cycle = self.cycle
        return (
            cycle.response_started
            and not cycle.response_complete
            and bool(cycle.chunked_encoding)
            and not cycle.disconnected
            and not cycle.flow.write_paused
            and cycle.scope["method"] != "HEAD"
        )

    def write(self, body: bytes) -> None:
        """Bytes of the body, now (call only when `ready`; empty bytes would end the chunked body)."""
        if body:
            self.cycle.transport.write(b"%x\r\n%b\r\n" % (len(body), body))


def body_writer(scope: Any) -> BodyWriter | None:
    """The request's BodyWriter; None under another server or protocol (then `send` carries every byte)."""
    writer = scope.get("extensions", {}).get(BODY_WRITER)
    return writer if isinstance(writer, BodyWriter) else None


def tls_terminated(
    http: type[HttpToolsProtocol],
    context: ssl.SSLContext,
    max_connections: int,
    handshake_s: float = HEADER_TIMEOUT_S,
) -> Callable[..., asyncio.BaseProtocol]:
    """uvicorn's `http=` for an HTTPS endpoint, TLS terminated here rather than by the event loop: a connection is
    counted from its accept, not from the end of its handshake (when the loop would first tell the HTTP
    protocol), so slow or silent handshakes cannot hold descriptors past the cap. At the cap the handshake
    waiting longest past UNUSED_GRACE_S makes room, else the newcomer is dropped (no TLS yet: no 503 to send);
    a handshake gets `handshake_s`."""
    handshaking: dict[_Handshake, float] = {}  # at most the cap

    class _Handshake(sslproto.SSLProtocol):
        def __init__(self, loop: asyncio.AbstractEventLoop, app: HttpToolsProtocol) -> None:
            # No waiter: nothing awaits the handshake (a failed one would leave an unretrieved exception).
            waiter = cast("asyncio.Future[Any]", None)
            super().__init__(loop, app, context, waiter, server_side=True, ssl_handshake_timeout=round(handshake_s))
            self.app, self.raw = app, cast(asyncio.Transport | None, None)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.raw = cast(asyncio.Transport, transport)
            now = self.app.loop.time()
            if len(handshaking) + len(self.app.connections) >= max_connections and not _evicted(now):
                self.raw.abort()
                return
            handshaking[self] = now
            super().connection_made(transport)

        def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
            handshaking.pop(self, None)
            super()._on_handshake_complete(handshake_exc)

        def connection_lost(self, exc: BaseException | None) -> None:
            handshaking.pop(self, None)
            super().connection_lost(exc)

    def _evicted(now: float) -> bool:
        late = [h for h, since in handshaking.items() if now - since >= UNUSED_GRACE_S and h.raw is not None]
        if not late:
            return False
        oldest = min(late, key=handshaking.__getitem__)
        handshaking.pop(oldest, None)
        cast(asyncio.Transport, oldest.raw).abort()
        return True

    def protocol(**uvicorn_args: Any) -> asyncio.BaseProtocol:
        return _Handshake(uvicorn_args.get("_loop") or asyncio.get_running_loop(), http(**uvicorn_args))

    return protocol
