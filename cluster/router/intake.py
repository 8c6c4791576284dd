"""A request's way in: read the body (bounded), parse, validate, check it fits the model, and describe it for
routing. Everything after this (admission steps, routing, forwarding) reads the one `Incoming` it returns."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from cluster.router.errors import ApiError
from cluster.router.validation import ChatRequest, CompletionRequest, check_limits, parse_body, validate
from cluster.routing.choose import RequestView
from cluster.routing.prefix_index import block_hashes
from cluster.routing.prompt import render_for_routing
from proto import orchard_pb2 as pb


@dataclass(frozen=True)
class Incoming:
    """A validated request, ready for admission and routing."""

    request_id: str
    endpoint: pb.Endpoint
    model: str
    stream: bool
    wants_usage: bool  # the client asked for usage on the stream; otherwise the router drops that chunk
    body: bytes  # what the engine receives
    view: RequestView  # what the routing policy reads

    def generate_request(self) -> pb.GenerateRequest:
        return pb.GenerateRequest(request_id=self.request_id, endpoint=self.endpoint, body=self.body)


Kind = type[ChatRequest] | type[CompletionRequest]


async def read_incoming(
    request: Request, endpoint: pb.Endpoint, kind: Kind, models: dict[str, pb.ModelInfo], max_body_bytes: int
) -> Incoming:
    """Raises ApiError (OpenAI's shape, the right status) for anything the router itself can refuse."""
    raw = await read_bounded(request, max_body_bytes)
    body = parse_body(raw)
    parsed = validate(body, kind)
    if parsed.model not in models:
        raise ApiError(404, f"The model `{parsed.model}` does not exist.", param="model", code="model_not_found")
    check_limits(parsed, models[parsed.model].max_model_len)
    wants_usage = bool((parsed.stream_options or {}).get("include_usage"))
    if parsed.stream and not wants_usage:  # usage travels on the last chunk; the relay drops it again
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        raw = json.dumps(body).encode()
    # Otherwise the client's bytes go to the engine exactly as sent (no re-serialization).
    session = request.headers.get("x-session-id") or parsed.user
    return Incoming(uuid.uuid4().hex, endpoint, parsed.model, parsed.stream, wants_usage, raw,
                    routing_view(parsed.model, session, body))  # fmt: skip


def routing_view(model: str, session: str | None, body: dict[str, Any]) -> RequestView:
    rendered = render_for_routing(body)
    return RequestView(model, session, block_hashes(rendered), len(rendered))


async def read_bounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"Request body of {int(declared)} bytes exceeds the limit of {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)
