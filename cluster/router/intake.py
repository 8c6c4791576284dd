"""A request's way in: read the body (bounded), parse and validate it (`read_request`), check it against its
model and describe it for routing (`for_model`). Everything after this (admission steps, routing, forwarding)
reads the one `Incoming` it returns."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from cluster.router.errors import ApiError, ClientLeft, Dialect
from cluster.router.routes import Route
from cluster.router.validation import (
    AnyRequest,
    check_capabilities,
    check_limits,
    check_tool_calling,
    parse_body,
    validate,
)
from cluster.routing.choose import RequestView
from cluster.routing.prefix_index import block_hashes
from cluster.routing.prompt import render_for_routing
from proto import orchard_pb2 as pb


@dataclass(frozen=True)
class Incoming:
    """A validated request, ready for admission and routing."""

    request_id: str
    endpoint: pb.Endpoint
    dialect: Dialect  # the shape of its errors
    model: str
    stream: bool
    wants_usage: bool  # the client asked for usage on the stream (its chunk then comes through)
    body: bytes  # what the client sent, unchanged
    view: RequestView  # what the routing policy reads
    home: str | None = None  # the one worker that can answer (it holds the response this one continues)
    owner: str = ""  # the team whose key sent it ("" while keys are off): who may continue what it stores
    choices: int = 1  # answers generated at once (n): their tokens interleave in one stream

    def generate_request(self) -> pb.GenerateRequest:
        return pb.GenerateRequest(
            request_id=self.request_id, endpoint=self.endpoint, body=self.body, stream=self.stream
        )


@dataclass(frozen=True)
class Parsed:
    """A body that is valid JSON of the right shape; the model it names is not checked yet."""

    raw: bytes
    body: dict[str, Any]
    fields: AnyRequest

    @staticmethod
    def of(body: dict[str, Any], kind: type[AnyRequest]) -> Parsed:
        """A body the router wrote itself (a retrieval, a translated request), validated as a client's is."""
        return Parsed(json.dumps(body).encode(), body, validate(body, kind))

    @property
    def model(self) -> str:
        return self.fields.model


Read = Callable[[], Awaitable[Parsed]]  # a request's body, read, parsed and validated as its route reads it
Pick = Callable[[Parsed], Route]  # the route a body goes on, where the body decides
BODY_TIMEOUT_S = 30.0  # a body trickling in slower than this is a slow-loris client, not a slow network
MAX_SESSION_CHARS = 256  # X-Session-Id, as long as OpenAI's `user`


async def read_request(request: Request, route: Route, max_body_bytes: int) -> Parsed:
    """Read (bounded in size and time), parse and validate. Raises ApiError (the right status)."""
    raw = await _read_raw(request, max_body_bytes)
    body = parse_body(raw)
    return Parsed(raw, body, validate(body, route.body))  # type: ignore[arg-type]  # a route's body is an AnyRequest


async def read_json(request: Request, max_body_bytes: int) -> dict[str, Any]:
    """A JSON object body, read as `read_request` reads one, for a route that validates it itself."""
    return parse_body(await _read_raw(request, max_body_bytes))


async def _read_raw(request: Request, max_body_bytes: int) -> bytes:
    check_json_type(request.headers.get("content-type"))
    try:
        return await asyncio.wait_for(read_bounded(request, max_body_bytes), BODY_TIMEOUT_S)
    except TimeoutError:
        raise ApiError(408, f"The request body did not arrive within {BODY_TIMEOUT_S:g} s.") from None
    except ClientDisconnect:
        raise ClientLeft from None


def credentials(request: Request) -> str | None:
    """The caller's key as `Authorization: Bearer KEY`, or Anthropic's `x-api-key: KEY` header."""
    authorization = request.headers.get("authorization")
    if authorization is None and (api_key := request.headers.get("x-api-key")):
        return f"Bearer {api_key}"
    return authorization


def check_json_type(content_type: str | None) -> None:
    """Only `application/json`: a web page can make a browser send text/plain or a form to any address without
    asking (no CORS preflight); a JSON body it cannot."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        got = f"`{media}`" if media else "none"
        raise ApiError(415, f"Send the request body as JSON with `Content-Type: application/json` (got {got}).")


def for_model(
    request: Parsed,
    route: Route,
    models: dict[str, pb.ModelInfo],
    session: str | None,
    request_id: str,
    awaited: Callable[[str], bool] = lambda model: False,
) -> Incoming:
    """Check the request against its model (known, fits the context) and describe it for routing. A model no
    agent reports yet but one may (`awaited`: the hosts file names it, a restarted router still learning) is
    unavailable, not unknown: SDKs retry a 503, never a 404."""
    endpoint = route.endpoint
    raw, body, fields = request.raw, request.body, request.fields
    if session is not None and len(session) > MAX_SESSION_CHARS:
        raise ApiError(400, f"The X-Session-Id header is longer than {MAX_SESSION_CHARS} characters.")
    if fields.model not in models:
        check_known(fields.model, awaited)
    path, served = route.path, models[fields.model].routes
    if served and path not in served:
        raise ApiError(
            404,
            f"The model `{fields.model}` does not serve {path} (it serves {', '.join(served)}).",
            param="model",
            code="route_not_served",
        )
    check_limits(fields, models[fields.model].max_model_len)
    check_capabilities(body, models[fields.model].unsupported, models[fields.model].engine)
    check_tool_calling(body, endpoint, models[fields.model])
    wants_usage = bool((fields.stream_options or {}).get("include_usage"))
    # The client's bytes go on exactly as sent; the agent settles stream options for its engine.
    view = routing_view(fields.model, session or fields.user, body)
    return Incoming(
        request_id,
        endpoint,
        route.dialect,
        fields.model,
        fields.stream,
        wants_usage,
        raw,
        view,
        choices=getattr(fields, "n", None) or 1,
    )


def check_known(model: str, awaited: Callable[[str], bool]) -> None:
    """Raise for a model no agent reports: 503 while one may yet (with Retry-After), else 404."""
    if awaited(model):
        raise ApiError(
            503,
            f"The model `{model}` is not available yet: no worker serving it has reported (the "
            "router or its workers are starting); try again shortly.",
            param="model",
            code="model_not_ready",
        )
    raise ApiError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


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
