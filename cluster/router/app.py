"""The router's HTTP surface: /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics and the
operator's /orchard/workers.

Each request goes through one pipeline: intake (read, validate, fit the model) → admission steps → forward
(pick a worker, Generate, relay). Admission steps are where the team gateway plugs in (keys, limits, queue):
each is an async callable that may refuse a request by raising ApiError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.router.errors import ApiError
from cluster.router.forwarding import Forwarder
from cluster.router.intake import Incoming, Kind, for_model, read_request
from cluster.router.metrics import RouterMetrics
from cluster.router.registry import Registry, WorkerHandle
from cluster.router.rows import GroupRow, WorkerRow, WorkersReply
from cluster.router.validation import ChatRequest, CompletionRequest
from proto import orchard_pb2 as pb
from proto.launch import RouterConfig

log = logging.getLogger(__name__)

WORKER_HEADER = "x-orchard-worker"

AdmissionStep = Callable[[Incoming, Request], Awaitable[None]]


def create_app(registry: Registry, config: RouterConfig, steps: Sequence[AdmissionStep] = ()) -> FastAPI:
    """The router app over a registry (started and stopped with the app) and its admission steps."""
    metrics = RouterMetrics()
    forwarder = Forwarder(registry, config, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            await registry.stop()

    app = FastAPI(title="Orchard", lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    _add_operator_routes(app, registry, metrics)

    async def handle(request: Request, endpoint: pb.Endpoint, kind: Kind) -> Response:
        model = "?"
        try:
            parsed = await read_request(request, kind, config.max_body_bytes)
            model = parsed.model
            started_at = time.monotonic()
            incoming = for_model(parsed, endpoint, registry.models(), request.headers.get("x-session-id"))
            for step in steps:
                await step(incoming, request)
            started = await forwarder.start(incoming)
        except ApiError as exc:
            metrics.requests.labels(model, str(exc.status)).inc()
            return exc.response()
        metrics.ttft.labels(model).observe(time.monotonic() - started_at)
        headers = {WORKER_HEADER: started.handle.worker_id, "x-request-id": incoming.request_id}
        if not incoming.stream:
            return await forwarder.whole(started, model, headers)
        relay = forwarder.relay(started, model, incoming.wants_usage)
        # The background task runs even when the client left before the body started streaming.
        return StreamingResponse(relay, media_type="text/event-stream", headers=headers,
                                 background=BackgroundTask(started.call.cancel))  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await handle(request, pb.ENDPOINT_CHAT_COMPLETIONS, ChatRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, pb.ENDPOINT_COMPLETIONS, CompletionRequest)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected router error")
        return ApiError(500, f"internal router error: {type(exc).__name__}").response()


def _add_operator_routes(app: FastAPI, registry: Registry, metrics: RouterMetrics) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        ready = registry.ready_count()
        body = {"status": "ok" if ready else "unavailable", "workers_ready": ready}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.exposition())

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "orchard", "max_model_len": m.max_model_len}
            for name, m in sorted(registry.models().items())
        ]
        return {"object": "list", "data": data}

    @app.get("/orchard/workers")
    async def workers() -> WorkersReply:
        now = time.monotonic()
        return WorkersReply(workers=[worker_row(handle, now) for handle in registry.workers.values()])


def worker_row(handle: WorkerHandle, now: float) -> WorkerRow:
    """One worker as operators see it."""
    info, sample = handle.info or pb.InfoReply(), handle.sample or pb.LoadSample()
    group = None
    if info.HasField("group"):
        g = info.group
        group = GroupRow(name=g.name, mode=g.mode, backend=g.backend, size=g.size, peers=list(g.peers))
    return WorkerRow(
        address=handle.address, worker_id=handle.worker_id, state=handle.state(now), models=list(handle.models),
        engine=info.engine, chip=info.chip, os=info.os, memory_bytes=info.memory_bytes, inflight=handle.inflight,
        served=handle.served, running=sample.running, waiting=sample.waiting,
        prefill_tokens_per_s=round(sample.prefill_tokens_per_s, 1),
        decode_tokens_per_s=round(sample.decode_tokens_per_s, 1), detail=sample.state_detail, group=group,
    )  # fmt: skip
