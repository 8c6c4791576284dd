"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status."""

from __future__ import annotations

import json
from typing import Any

import grpc
from fastapi.responses import JSONResponse

from proto import errors

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


RETRY_AFTER_S = 2


class ApiError(Exception):
    """Raised anywhere in request handling; turned into an OpenAI error response at the edge."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        headers = dict(headers or {})
        if self.status in (429, 503) and not any(h.lower() == "retry-after" for h in headers):
            headers["retry-after"] = str(RETRY_AFTER_S)  # no worker now: an engine restarts or a host returns
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


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


def from_grpc(exc: grpc.aio.AioRpcError) -> ApiError:
    """A failed Generate as the client should see it: the engine's own error when the agent attached one,
    otherwise what the transport failure means (503 unavailable, 504 timeout, 502 anything else)."""
    metadata = exc.trailing_metadata()
    status = errors.http_status(metadata)
    if status is not None:
        return upstream_error(status, errors.error_body(metadata))
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return ApiError(503, f"worker unavailable: {exc.details()}", code="worker_unavailable")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(504, "the worker did not finish in time", code="timeout")
    return ApiError(502, f"worker error {code.name}: {exc.details()}", code="worker_error")
