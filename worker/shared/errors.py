"""How an error crosses from agent to router: gRPC trailers carrying the HTTP status and the OpenAI error body.

The agent ends a failed Generate with `trailers(status, body)` and the gRPC code `grpc_code(status)`; the
router reads them back with `http_status(metadata)` and `error_body(metadata)` and answers in OpenAI's shape.
A gRPC error without these trailers is a transport failure, not an engine's verdict.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import grpc

HTTP_STATUS_KEY = "orchard-http-status"
ERROR_BODY_KEY = "orchard-error-bin"  # `-bin`: gRPC carries the value as bytes

# HTTP status of an engine error -> the gRPC code it travels as.
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

Metadata = Iterable[tuple[str, Any]] | None


def openai_error(message: str, kind: str, status: int, code: str | None = None) -> bytes:
    """An OpenAI-shaped error body; `code`: a stable word a client can test (default: the status)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code or status}}
    return json.dumps(body).encode()


def grpc_code(status: int) -> grpc.StatusCode:
    return _HTTP_TO_GRPC.get(status, grpc.StatusCode.INTERNAL)


def trailers(status: int, body: bytes) -> tuple[tuple[str, str | bytes], ...]:
    return ((HTTP_STATUS_KEY, str(status)), (ERROR_BODY_KEY, body))


def http_status(metadata: Metadata) -> int | None:
    """The HTTP status the agent attached, or None for a transport failure."""
    for key, value in metadata or ():
        if key == HTTP_STATUS_KEY:
            return int(value)
    return None


def error_body(metadata: Metadata) -> bytes:
    for key, value in metadata or ():
        if key == ERROR_BODY_KEY:
            return value if isinstance(value, bytes) else str(value).encode()
    return b""
