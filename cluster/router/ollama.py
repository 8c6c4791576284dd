"""Ollama's API at the router: `/api/chat`, `/api/generate`, `/api/embed` go through the same pipeline as the
OpenAI routes (keys, limits, fair admission, routing) as the OpenAI request they translate to
(cluster/router/ollama_shapes.py), and their answers are translated back; `/api/tags`, `/api/ps`, `/api/show`
and `/api/version` answer from what the router knows."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from cluster.gateway.gateway import Gateway, Refusal
from cluster.router import ollama_shapes as shapes
from cluster.router.errors import ApiError, Dialect, api_error
from cluster.router.intake import Parsed, check_known, credentials, read_json
from cluster.router.registry import Registry
from cluster.router.routes import Route
from cluster.router.validation import ChatRequest, CompletionRequest, EmbeddingRequest, validate
from proto import orchard_pb2 as pb

Handle = Callable[..., Awaitable[Response]]  # the router's pipeline: (request, route, read, pick=None)
CHAT = Route(pb.ENDPOINT_CHAT_COMPLETIONS, ChatRequest, Dialect.OLLAMA)
COMPLETE = Route(pb.ENDPOINT_COMPLETIONS, CompletionRequest, Dialect.OLLAMA)
EMBED = Route(pb.ENDPOINT_EMBEDDINGS, EmbeddingRequest, Dialect.OLLAMA)
NDJSON = "application/x-ndjson"


class ShowAsk(BaseModel):
    model: str = Field(min_length=1, max_length=512)


# What each translated route reads (published in the OpenAPI document).
BODIES: dict[str, tuple[str, type[BaseModel]]] = {
    "/api/chat": ("post", shapes.OllamaChat),
    "/api/generate": ("post", shapes.OllamaGenerate),
    "/api/embed": ("post", shapes.OllamaEmbed),
    "/api/show": ("post", ShowAsk),
}


def install(app: FastAPI, handle: Handle, registry: Registry, gateway: Gateway, limit: int) -> None:
    """The Ollama routes, over the router's pipeline (`handle`); `limit`: the largest body read."""

    async def translated(request: Request, ollama: type[Any]) -> Any:
        body = await read_json(request, limit)
        if isinstance(body.get("model"), str):
            body["model"] = served_name(body["model"], registry)
        return validate(body, ollama)

    @app.post("/api/chat")
    async def chat(request: Request) -> Response:
        replies: list[shapes.Reply] = []  # made once the body is read

        async def read() -> Parsed:
            ask = await translated(request, shapes.OllamaChat)
            replies.append(shapes.Reply(ask.model, chat=True))
            return Parsed.of(shapes.chat_body(ask), ChatRequest)

        return _answer(await handle(request, CHAT, read), replies)

    @app.post("/api/generate")
    async def generate(request: Request) -> Response:
        replies: list[shapes.Reply] = []

        async def read() -> Parsed:
            ask = await translated(request, shapes.OllamaGenerate)
            is_chat, body = shapes.generate_body(ask)
            replies.append(shapes.Reply(ask.model, chat=False, from_chat=is_chat))
            return Parsed.of(body, ChatRequest if is_chat else CompletionRequest)

        def pick(parsed: Parsed) -> Route:  # a raw prompt is a completion
            return CHAT if isinstance(parsed.fields, ChatRequest) else COMPLETE

        return _answer(await handle(request, CHAT, read, pick), replies)

    @app.post("/api/embed")
    async def embed(request: Request) -> Response:
        started, names = time.monotonic_ns(), []

        async def read() -> Parsed:
            ask = await translated(request, shapes.OllamaEmbed)
            names.append(ask.model)
            return Parsed.of(shapes.embed_body(ask), EmbeddingRequest)

        response = await handle(request, EMBED, read)
        if response.status_code != 200:
            return response
        return JSONResponse(
            shapes.embed_reply(names[0], json.loads(bytes(response.body)), started), headers=_kept(response)
        )

    _add_listings(app, registry, gateway, limit)


def served_name(model: str, registry: Registry) -> str:
    """The served model an Ollama client means: its name, or without Ollama's default tag `:latest`."""
    return model if model in registry.models() else model.removesuffix(":latest")


def _kept(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")}


def _answer(response: Response, reply: list[shapes.Reply]) -> Response:
    """The pipeline's OpenAI answer in Ollama's shape (its errors are in Ollama's shape already)."""
    if response.status_code != 200 or not reply:
        return response
    if isinstance(response, StreamingResponse):
        response.body_iterator = _lines(response.body_iterator, reply[0])
        response.headers["content-type"] = NDJSON
        return response
    return JSONResponse(reply[0].whole(json.loads(bytes(response.body))), headers=_kept(response))


async def _lines(frames: AsyncIterable[Any], reply: shapes.Reply) -> AsyncIterator[bytes]:
    """SSE frames (complete, as the relay writes them) in, NDJSON lines out, the last one `done`."""
    async for frame in frames:
        out = []
        for event in bytes(frame).split(b"\n\n"):
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            out += [json.dumps(line).encode() + b"\n" for line in reply.chunk(json.loads(event[6:]))]
        if out:
            yield b"".join(out)
    if not reply.finished:  # the engine sent no usage chunk: end the stream as Ollama does anyway
        yield json.dumps(reply.done(None)).encode() + b"\n"


def _add_listings(app: FastAPI, registry: Registry, gateway: Gateway, limit: int) -> None:
    def cards() -> list[dict[str, Any]]:
        models = sorted(registry.models().items())
        return [shapes.model_card(name, m) for name, m in models]

    async def guarded(request: Request, answer: Callable[[], Awaitable[dict[str, Any]]]) -> Response:
        try:
            gateway.authenticate(credentials(request))
            return JSONResponse(await answer())
        except (ApiError, Refusal) as exc:
            headers = exc.headers if isinstance(exc, Refusal) else None
            return api_error(exc).response(headers, Dialect.OLLAMA)

    @app.get("/api/tags")
    async def tags(request: Request) -> Response:
        async def answer() -> dict[str, Any]:
            return {"models": cards()}

        return await guarded(request, answer)

    @app.get("/api/ps")
    async def running(request: Request) -> Response:
        async def answer() -> dict[str, Any]:  # the models loaded now (an on-demand one only while it is)
            loaded = [card for card in cards() if registry.state_of(card["name"]) == "loaded"]
            return {"models": [{**card, "expires_at": None, "size_vram": 0} for card in loaded]}

        return await guarded(request, answer)

    @app.post("/api/show")
    async def show(request: Request) -> Response:
        async def answer() -> dict[str, Any]:
            ask = validate(await read_json(request, limit), ShowAsk)
            name = served_name(ask.model, registry)
            if name not in registry.models():
                check_known(name, registry.awaited)  # 503 while an agent may yet serve it, else 404
            info = registry.models()[name]
            return {
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": {"format": "", "family": ""},
                "model_info": {"general.context_length": info.max_model_len},
                "capabilities": shapes.capabilities(info),
            }

        return await guarded(request, answer)

    @app.get("/api/version")
    async def version() -> JSONResponse:  # no key: tools probe it to find an Ollama server, as Ollama allows
        return JSONResponse({"version": shapes.API_VERSION})
