"""The router's HTTP connections, guarded: at most `max_connections` open at once, and a client gets
HEADER_TIMEOUT_S to send a request's headers (a slow-loris client holding sockets open without ever finishing a
request is closed). The body has its own deadline where it is read (cluster/router/intake.py). At shutdown, idle
connections are cut rather than closed politely.

uvicorn closes idle keep-alive connections itself, but has neither a cap on connections nor a deadline for a
request's headers; this is its httptools protocol with both.
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
_SLOW = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"


def _reply(head: bytes, message: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})
    return head + b"content-length: %d\r\n\r\n" % len(body) + body.encode()


def guarded_protocol(max_connections: int, header_timeout_s: float = HEADER_TIMEOUT_S) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` setting."""

    class Guarded(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("connection refused: %d open connections is the limit", max_connections)
                transport.write(_reply(_BUSY, "Too many open connections to this endpoint; try again shortly."))
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the next request on a kept-alive connection starts
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def shutdown(self) -> None:
            """An idle connection with nothing left to send is cut at once: closing it would, with TLS, wait up to
            30 s for the client to answer the close (Python's TLS shutdown timeout), holding the router's exit."""
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self.transport.get_write_buffer_size() == 0:
                self.transport.abort()
            else:
                super().shutdown()

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
