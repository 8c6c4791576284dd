"""Every request's id and its one log line. The id comes in as the client's `x-request-id` when that is a
sane token (so a team's own tracing carries through), or is made here; it goes out on every response, to the
agent and engine (GenerateRequest.request_id), into the usage row and into the line the router logs when the
request ends: id, key and team, model, worker, status, time to first token, tokens, duration — what a user
asking "why was this slow?" and the admin answering need. `--log-format json` writes every log line as JSON."""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.gateway.usage import UsageRow

HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
log = logging.getLogger("orchard.requests")


def request_id(scope: Scope) -> str:
    """The id of the request in `scope` (set by RequestIds)."""
    return str(scope.get("state", {}).get("request_id") or uuid.uuid4().hex)


class RequestIds:
    """ASGI middleware: gives each HTTP request its id and puts it on the response (unless already there)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER.encode()), "")
        rid = given if _SANE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                if not any(k.lower() == HEADER.encode() for k, _ in headers):
                    headers.append((HEADER.encode(), rid.encode()))
            await send(message)

        await self.app(scope, receive, tagged)


def fields(row: UsageRow) -> dict[str, Any]:
    """The request's line, as fields (no secret: the key's id, never the key)."""
    return {
        "request_id": row.request_id, "key": row.key_id, "team": row.team, "model": row.model,
        "worker": row.worker, "status": row.status,
        "ttft_ms": None if row.ttft_s is None else round(row.ttft_s * 1000, 1),
        "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
        "cached_tokens": row.cached_tokens, "duration_ms": round(row.duration_s * 1000, 1),
    }  # fmt: skip


def write(row: UsageRow) -> None:
    if log.isEnabledFor(logging.INFO):
        line = fields(row)
        text = " ".join(f"{k}={'-' if v is None else v}" for k, v in line.items())
        log.info("request %s", text, extra={"fields": line})


class JsonLines(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and a request line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}  # fmt: skip
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
