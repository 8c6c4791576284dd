"""Every request's id and its one log line. The id comes in as the client's `x-request-id` when that is a
sane token (so a team's own tracing carries through), or is made here; it goes out on every response, to the
agent (GenerateRequest.request_id: it names it when the engine fails a request), into the usage row and into
the line the router logs when the request ends: id, key and team, model, worker, status, time to first token,
tokens, duration — what a user asking "why was this slow?" and the admin answering need
(`logformat.JsonLines` puts its fields in JSON)."""

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
_TOKEN = re.compile(r"[\w.:/@+-]{1,200}")
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
        "request_id": row.request_id,
        "key": row.key_id,
        "team": row.team,
        "model": row.model,
        "worker": row.worker,
        "status": row.status,
        "ttft_ms": None if row.ttft_s is None else round(row.ttft_s * 1000, 1),
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cached_tokens": row.cached_tokens,
        "duration_ms": round(row.duration_s * 1000, 1),
    }


def write(row: UsageRow) -> None:
    if log.isEnabledFor(logging.INFO):
        line = fields(row)
        log.info("request %s", " ".join(f"{k}={_value(v)}" for k, v in line.items()), extra={"fields": line})


def _value(value: object) -> str:
    """A value as a token, or quoted (JSON) when it is not one: a client's model name must not forge a line."""
    text = "-" if value is None else str(value)
    return text if _TOKEN.fullmatch(text) else json.dumps(text)
