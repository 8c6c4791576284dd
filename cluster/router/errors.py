"""Errors in the shape of the API the client speaks, with the right HTTP status: OpenAI's
`{"error": {"message", "type", "param", "code"}}`, Anthropic's `{"type": "error", "error": {"type", "message"}}`
or Ollama's `{"error": "message"}`."""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import grpc
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.gateway.gateway import Refusal
from cluster.router.logformat import Sparse
from worker.shared import errors

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",  # OpenAI's own type for a bad key (code invalid_api_key)
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class Dialect(Enum):
    """Whose API a route speaks, so whose error shape it answers in."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"


log = logging.getLogger(__name__)

RETRY_AFTER_S = 2


class ClientLeft(Exception):
    """The client closed its connection before its request's body arrived whole: no one to answer (a 499)."""


class ApiError(Exception):
    """Raised anywhere in request handling; turned into an OpenAI error response at the edge."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self, dialect: Dialect = Dialect.OPENAI) -> dict[str, Any]:
        if dialect is Dialect.ANTHROPIC:
            kind = _ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
            return {"type": "error", "error": {"type": kind, "message": self.message}}
        if dialect is Dialect.OLLAMA:
            return {"error": self.message}
        kind = _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self, headers: Mapping[str, str] | None = None, dialect: Dialect = Dialect.OPENAI) -> JSONResponse:
        headers = dict(headers or {})
        if self.status in (429, 503) and not any(h.lower() == "retry-after" for h in headers):
            headers["retry-after"] = str(RETRY_AFTER_S)  # no worker now: an engine restarts or a host returns
        return JSONResponse(self.body(dialect), status_code=self.status, headers=headers)


def api_error(exc: ApiError | Refusal) -> ApiError:
    """An error to answer with, also for the gateway's refusals (a bad key, a limit)."""
    if isinstance(exc, ApiError):
        return exc
    return ApiError(exc.status, exc.message, code=exc.code)


class Unexpected:
    """ASGI middleware: an exception nothing else handled becomes one log line (with an incident id) and a
    generic 500 for the client: the exception's name and text are the operator's, not the client's. Starlette's
    own handler would log the traceback twice (it re-raises to the server)."""

    def __init__(self, app: ASGIApp, dialect_of: Callable[[str], Dialect]) -> None:
        self.app, self.dialect_of = app, dialect_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientLeft:
            log.info(
                "%s %s: the client left before its request body arrived", scope.get("method", ""), scope.get("path", "")
            )
        except Exception as exc:
            incident = uuid.uuid4().hex[:12]
            where = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "unexpected error, incident %s, %s %s: %r at %s:%d",
                incident,
                scope.get("method", ""),
                scope.get("path", ""),
                exc,
                where.filename,
                where.lineno,
            )
            log.debug("incident %s", incident, exc_info=exc)
            if started or scope["type"] != "http":
                return  # a response already begun cannot become an error; the connection closes
            message = f"Internal error in the router (incident {incident}); the operator's log has the details."
            error = ApiError(500, message, code="internal_error")
            await error.response(dialect=self.dialect_of(scope.get("path", "")))(scope, receive, send)


def upstream_error(status: int, body: bytes) -> ApiError:
    """An engine's own error, kept as the engine phrased it when it is OpenAI-shaped."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict) and err.get("message"):
        code = err.get("code")
        return ApiError(status, str(err["message"]), param=err.get("param"), code=str(code) if code else None)
    text = body.decode(errors="replace").strip()[:500] or f"engine error (HTTP {status})"
    return ApiError(status, text)


_failures = Sparse(log)  # one line per kind of failure every 10 s, however many requests meet it


def from_grpc(exc: grpc.aio.AioRpcError) -> ApiError:
    """A failed Generate as the client should see it: the engine's own error when the agent attached one,
    otherwise what the transport failure means (503 unavailable, 504 timeout, 502 anything else)."""
    metadata = exc.trailing_metadata()
    status = errors.http_status(metadata)
    if status is not None:
        return upstream_error(status, errors.error_body(metadata))
    code = exc.code()  # gRPC's details (`Socket closed`, a peer's exception) are the operator's: logged, not sent
    _failures.warning(code.name, "worker call failed: %s: %s", code.name, " ".join((exc.details() or "").split())[:300])
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return ApiError(
            503, "The worker serving this request became unavailable; try again.", code="worker_unavailable"
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(504, "The worker did not finish in time.", code="timeout")
    return ApiError(502, f"The worker failed this request ({code.name}).", code="worker_error")
