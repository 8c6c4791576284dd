"""The router's HTTP surface: /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics and the
operator's /orchard/workers.

Each request goes through one pipeline: intake (read, validate, fit the model) → the gateway (key, limits,
fair admission queue) → forward (pick a worker with a free slot, Generate, relay) → the gateway again when it
ends (free the slot, reconcile tokens, record usage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.gateway.gateway import Ask, Gateway, Outcome, Pass, Refusal
from cluster.router import ollama, schema
from cluster.router.errors import ApiError, Unexpected, api_error
from cluster.router.forwarding import CLIENT_CLOSED, Ended, Forwarder
from cluster.router.intake import Incoming, Parsed, Pick, Read, credentials, for_model, read_request
from cluster.router.metrics import RouterMetrics
from cluster.router.registry import Registry, WorkerHandle
from cluster.router.routes import GET_RESPONSE, RELAYED, Route, dialect_of
from cluster.router.rows import GroupRow, WorkerRow, WorkersReply
from cluster.router.validation import ResponseRetrieval, ResponsesRequest
from proto import orchard_pb2 as pb
from proto.launch import RouterConfig

log = logging.getLogger(__name__)

WORKER_HEADER = "x-orchard-worker"


def create_app(
    registry: Registry, config: RouterConfig, gateway: Gateway | None = None, settle_s: float = 0.0
) -> FastAPI:
    """The router app over a registry and a gateway (both started and stopped with the app). `settle_s`: wait
    (at most that long) until every agent has told its state before serving — a router taking over from a
    running one must not answer "no such model" for the second it would otherwise not know them."""
    metrics = RouterMetrics()
    forwarder = Forwarder(registry, config, metrics)
    gateway = gateway or Gateway(None, registry.capacity, require_auth=False, max_queue=config.max_queue)
    gateway.on_usage = metrics.count_usage

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        await gateway.start()
        if settle_s:
            await registry.settled(settle_s)
        try:
            yield
        finally:
            await gateway.stop()
            await registry.stop()

    app = FastAPI(title="Orchard", lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    _add_operator_routes(app, registry, metrics, gateway)

    pipeline = _Pipeline(registry, config, metrics, forwarder, gateway)
    schema.install(app, {"/orchard/drain": ("post", DrainAsk)} | ollama.BODIES)
    for route in RELAYED:
        app.add_api_route(route.path, pipeline.endpoint(route), methods=["POST"], name=route.path)

    @app.get(GET_RESPONSE.path)
    async def get_response(request: Request, response_id: str) -> Response:
        """A stored response, from the worker that stored it (the router remembers which)."""
        return await pipeline.handle(request, GET_RESPONSE, lambda: pipeline.retrieval(response_id))

    ollama.install(app, pipeline.handle, registry, gateway, config.max_body_bytes)
    return app


@dataclass
class _Pipeline:
    """One request's way through the router: key → intake → admission → forward → the end, accounted once."""

    registry: Registry
    config: RouterConfig
    metrics: RouterMetrics
    forwarder: Forwarder
    gateway: Gateway

    def endpoint(self, route: Route) -> Callable[[Request], Awaitable[Response]]:
        async def relayed(request: Request) -> Response:
            return await self.handle(request, route, lambda: read_request(request, route, self.config.max_body_bytes))

        return relayed

    async def handle(self, request: Request, route: Route, read: Read, pick: Pick | None = None) -> Response:
        """The response to a request for `route`; `read` gives its body, parsed and validated; `pick`, where the
        body decides, the route it goes on (Ollama's generate: a chat, or a completion when raw)."""
        model = "?"
        try:
            key = self.gateway.authenticate(credentials(request))  # before reading anything
            parsed = await read()
            model, route = parsed.model, pick(parsed) if pick else route
            started_at = time.monotonic()
            incoming = for_model(parsed, route, self.registry.models(), request.headers.get("x-session-id"))
            owner = key.team if key else ""
            incoming = replace(incoming, owner=owner, home=self._home(parsed, owner, started_at))
            ask = Ask(incoming.request_id, incoming.model, incoming.view.prompt_chars, parsed.fields.requested_tokens())
            granted = await self.gateway.admit(ask, key, self.config.request_timeout_s)
        except (ApiError, Refusal) as exc:
            error = api_error(exc)
            self.metrics.requests.labels(model, str(error.status)).inc()
            return error.response(exc.headers if isinstance(exc, Refusal) else None, route.dialect)
        except TimeoutError:
            self.metrics.requests.labels(model, "504").inc()
            error = ApiError(504, "The request waited in the queue past its deadline.", code="timeout")
            return error.response(dialect=route.dialect)
        ending = _Ending(self.gateway, granted, started_at)
        try:
            response = await _unless_client_leaves(request, self._forward(incoming, granted, ending, started_at))
            if response is None:  # gone before the answer (or a stream's first byte): the engine's work is cancelled
                self.metrics.requests.labels(model, str(CLIENT_CLOSED)).inc()
                ending(Ended(CLIENT_CLOSED, "", pb.Usage(), counted=False))
                return Response(status_code=CLIENT_CLOSED)
            return response
        except BaseException:  # whatever went wrong, the slot and the reservation are given back
            ending(Ended(500, "", pb.Usage(), counted=True))
            raise

    def _home(self, parsed: Parsed, owner: str, now: float) -> str | None:
        """The worker holding the response a Responses request continues or retrieves. One the router does not
        know for this team is a 404: another worker's engine does not have it, and another team may not see it."""
        stored = getattr(parsed.fields, "previous_response_id", None) or getattr(parsed.fields, "response_id", None)
        if not stored:
            return None
        home = self.forwarder.homes.get(stored, now)
        if home is None or home.owner != owner:
            param = "previous_response_id" if isinstance(parsed.fields, ResponsesRequest) else None
            raise _unknown_response(stored, param)
        return home.worker

    async def retrieval(self, response_id: str) -> Parsed:
        """GET /v1/responses/{id} as a request to the model that made it (whose it is: checked in `_home`)."""
        home = self.forwarder.homes.get(response_id, time.monotonic()) if len(response_id) <= 128 else None
        if home is None:
            raise _unknown_response(response_id, None)
        return Parsed.of({"model": home.model, "response_id": response_id}, ResponseRetrieval)

    async def _forward(self, incoming: Incoming, granted: Pass, ending: _Ending, started_at: float) -> Response:
        model, remaining = incoming.model, self.config.request_timeout_s - (time.monotonic() - started_at)
        try:
            started = await self.forwarder.start(incoming, remaining)
        except ApiError as exc:
            self.metrics.requests.labels(model, str(exc.status)).inc()
            ending(Ended(exc.status, "", pb.Usage(), counted=True))
            return exc.response(granted.headers, incoming.dialect)
        ending.first_byte = time.monotonic()
        self.metrics.ttft.labels(model).observe(ending.first_byte - started_at)
        headers = {WORKER_HEADER: started.handle.worker_id, "x-request-id": incoming.request_id, **granted.headers}
        if not incoming.stream:
            return await self.forwarder.whole(started, incoming, headers, ending)
        relay = self.forwarder.relay(started, incoming, ending)
        # The background task runs even when the client left before the body started streaming.
        return StreamingResponse(relay, media_type="text/event-stream", headers=headers,
                                 background=BackgroundTask(ending.close, started.call))  # fmt: skip


def _unknown_response(response_id: str, param: str | None) -> ApiError:
    return ApiError(404, f"No response with id `{response_id[:128]}` is known to this router for your key (made "
                    "elsewhere, by another team, with store: false, or forgotten after a week).", param=param,
                    code="response_not_found")  # fmt: skip


CLIENT_POLL_S = 0.5


async def _unless_client_leaves(request: Request, work: Awaitable[Response]) -> Response | None:
    """`work`'s response, or None once the client has gone: `work` is then cancelled, which cancels its Generate
    call, and the agent aborts the engine request. A whole (non-streamed) answer is all first byte, so without
    this a client that left would hold its engine slot until the answer was done."""
    task = asyncio.ensure_future(work)
    try:
        while not (await asyncio.wait({task}, timeout=CLIENT_POLL_S))[0]:
            if await request.is_disconnected() and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]  # the handler itself is cancelled
                    raise asyncio.CancelledError
                return None
        # Done, even if the client left meanwhile: Starlette then sends nothing and still runs the response's
        # background (which ends a stream's Generate call); dropping the response would leave that call open.
        return task.result()
    finally:
        task.cancel()  # a no-op once done; ends the work if this handler is cancelled


class _Ending:
    """Ends a request at the gateway exactly once, however it ends (done, failed, client gone)."""

    def __init__(self, gateway: Gateway, granted: Pass, started_at: float) -> None:
        self.gateway, self.granted, self.started_at = gateway, granted, started_at
        self.first_byte: float | None = None
        self.done = False

    def __call__(self, ended: Ended) -> None:
        if self.done:
            return
        self.done = True
        usage = ended.usage
        prompt = usage.prompt_tokens if ended.counted else None  # None: the gateway's admission estimate
        ttft = self.first_byte - self.started_at if self.first_byte is not None else None
        outcome = Outcome(ended.status, ended.worker or None, prompt, usage.completion_tokens,
                          usage.cached_prompt_tokens, ttft)  # fmt: skip
        self.gateway.finish(self.granted, outcome)

    def close(self, call: Any) -> None:
        call.cancel()  # no-op when finished; aborts the engine request when the client left
        self(Ended(CLIENT_CLOSED, "", pb.Usage(), counted=False))  # only if the relay never ran (client left first)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _answer_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response(dialect=dialect_of(request.url.path))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail)).response(dialect=dialect_of(request.url.path))

    app.add_middleware(Unexpected, dialect_of=dialect_of)


def _add_operator_routes(app: FastAPI, registry: Registry, metrics: RouterMetrics, gateway: Gateway) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        ready = registry.ready_count()
        body = {"status": "ok" if ready else "unavailable", "workers_ready": ready}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        try:  # worker addresses, models and teams: an operator's, once keys are on
            gateway.check_admin(credentials(request))
        except Refusal as exc:
            return api_error(exc).response()
        now = time.monotonic()
        for handle in registry.workers.values():
            metrics.breaker.labels(handle.address).set(handle.breaker.state(now).gauge)
        return PlainTextResponse(metrics.exposition())

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        try:
            gateway.authenticate(credentials(request))
        except Refusal as exc:
            return api_error(exc).response()
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "orchard",
                "max_model_len": m.max_model_len,
                "routes": list(m.routes),
            }
            for name, m in sorted(registry.models().items())
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/orchard/workers")
    async def workers(request: Request) -> Response:
        try:
            gateway.check_admin(credentials(request))
        except Refusal as exc:
            return api_error(exc).response()
        now = time.monotonic()
        rows = [worker_row(handle, now) for handle in registry.workers.values()]
        reply = WorkersReply(workers=rows, router_pid=os.getpid())
        return Response(reply.model_dump_json(), media_type="application/json")

    @app.post("/orchard/drain")
    async def drain(request: Request) -> Response:
        """Stop (or resume) sending new requests to one worker; its requests in flight finish."""
        try:
            gateway.check_admin(credentials(request))
            ask = DrainAsk.model_validate_json(await request.body())
        except Refusal as exc:
            return api_error(exc).response()
        except ValidationError as exc:
            return ApiError(400, f'expected {{"worker": ..., "draining": true|false}}: {exc}').response()
        found = registry.find(ask.worker)
        if not found:
            return ApiError(404, f"no worker `{ask.worker}`", code="unknown_worker").response()
        if len(found) > 1:
            names = ", ".join(sorted(h.worker_id for h in found))
            return ApiError(409, f"`{ask.worker}` names {len(found)} workers ({names}); give one of those",
                            code="ambiguous_worker").response()  # fmt: skip
        handle = found[0]
        try:
            await registry.drain(handle, ask.draining)
        except grpc.aio.AioRpcError as exc:
            return ApiError(503, f"worker {handle.address} did not answer: {exc.code().name}").response()
        return Response(worker_row(handle, time.monotonic()).model_dump_json(), media_type="application/json")


class DrainAsk(BaseModel):
    worker: str  # id, address or host
    draining: bool = True


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
        breaker=handle.breaker.state(now).value, draining=sample.draining,
    )  # fmt: skip
