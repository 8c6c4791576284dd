"""The router's HTTP surface: /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics.

Each request: read (bounded) → validate → pick a ready worker → Generate over gRPC → relay the engine's
chunks unchanged as SSE (or the whole body). A client that goes away cancels the gRPC call, which makes the
agent close its engine stream, which makes the engine abort the request.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.router.errors import ApiError, upstream_error
from cluster.router.registry import Registry, WorkerHandle
from cluster.router.validation import ChatRequest, CompletionRequest, check_limits, parse_body, validate
from cluster.routing.prefix_index import block_hashes
from cluster.routing.prompt import render_for_routing
from cluster.scheduler import Decision, RequestView, RoutingState, choose
from proto import orchard_pb2 as pb

log = logging.getLogger(__name__)

WORKER_HEADER = "x-orchard-worker"


@dataclass(frozen=True)
class RouterSettings:
    policy: str = "prefix"  # prefix | least_loaded | round_robin
    model_policies: tuple[tuple[str, str], ...] = ()  # per-model overrides
    max_body_bytes: int = 4 * 1024 * 1024
    max_attempts: int = 2  # a request that fails before its first byte is tried on one more worker
    request_timeout_s: float = 900.0


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "orchard_requests", "requests by model and HTTP status", ["model", "status"], registry=self.registry
        )
        self.ttft = Histogram(
            "orchard_time_to_first_byte_seconds", "router-side time to first byte", ["model"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.decisions = Counter(
            "orchard_routing_decisions", "scheduler decisions by reason", ["reason"], registry=self.registry
        )
        self.tokens = Counter("orchard_tokens", "tokens by model and kind", ["model", "kind"], registry=self.registry)


def create_app(registry: Registry, settings: RouterSettings | None = None) -> FastAPI:
    settings = settings or RouterSettings()
    metrics = RouterMetrics()
    routing = RoutingState()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            await registry.stop()

    app = FastAPI(title="Orchard", lifespan=lifespan, docs_url=None, redoc_url=None)

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

    @app.get("/health")
    async def health() -> JSONResponse:
        ready = registry.ready_count()
        body = {"status": "ok" if ready else "unavailable", "workers_ready": ready}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry).decode())

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "orchard", "max_model_len": m.max_model_len}
            for name, m in sorted(registry.models().items())
        ]
        return {"object": "list", "data": data}

    @app.get("/orchard/workers")
    async def workers() -> dict[str, Any]:
        now = time.monotonic()
        rows = []
        for handle in registry.workers.values():
            info, sample = handle.info, handle.sample
            rows.append({
                "address": handle.address, "worker_id": handle.worker_id, "state": handle.state_name(now),
                "models": list(handle.models), "engine": info.engine if info else "",
                "chip": info.chip if info else "", "os": info.os if info else "",
                "memory_bytes": info.memory_bytes if info else 0, "inflight": handle.inflight,
                "served": handle.served, "running": sample.running if sample else 0,
                "waiting": sample.waiting if sample else 0,
                "prefill_tokens_per_s": round(sample.prefill_tokens_per_s, 1) if sample else 0.0,
                "decode_tokens_per_s": round(sample.decode_tokens_per_s, 1) if sample else 0.0,
                "detail": sample.state_detail if sample else "",
                "group": _group_row(info),
            })  # fmt: skip
        return {"workers": rows}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _handle(request, pb.ENDPOINT_CHAT_COMPLETIONS, ChatRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _handle(request, pb.ENDPOINT_COMPLETIONS, CompletionRequest)

    async def _handle(request: Request, endpoint: pb.Endpoint, kind: type[ChatRequest | CompletionRequest]) -> Response:
        model = "?"
        try:
            raw = await _read_bounded(request, settings.max_body_bytes)
            body = parse_body(raw)
            parsed = validate(body, kind)
            model = parsed.model
            known = registry.models()
            if model not in known:
                raise ApiError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
            check_limits(parsed, known[model].max_model_len)
            wants_usage = bool((parsed.stream_options or {}).get("include_usage"))
            if parsed.stream and not wants_usage:  # usage travels on the last chunk; dropped again below
                body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
                raw = json.dumps(body).encode()
            # Otherwise the client's bytes go to the engine exactly as sent (no re-serialization).
            generate = pb.GenerateRequest(request_id=uuid.uuid4().hex, endpoint=endpoint, body=raw)
            started = time.monotonic()
            session = request.headers.get("x-session-id") or parsed.user
            rendered = render_for_routing(body)
            view = RequestView(model, session, block_hashes(rendered), len(rendered))
            handle, call, first = await _start(view, generate)
        except ApiError as exc:
            metrics.requests.labels(model, str(exc.status)).inc()
            return exc.response()
        metrics.ttft.labels(model).observe(time.monotonic() - started)
        headers = {WORKER_HEADER: handle.worker_id, "x-request-id": generate.request_id}
        if parsed.stream:
            relay = _relay_stream(handle, call, first, model, wants_usage)
            # The background task runs even when the client left before the body started streaming.
            return StreamingResponse(
                relay, media_type="text/event-stream", headers=headers, background=BackgroundTask(call.cancel)
            )
        return await _whole(handle, call, first, model, headers)

    def _decide(request: RequestView, tried: frozenset[str]) -> Decision | None:
        now = time.monotonic()
        for handle in registry.workers.values():
            if not handle.connected:  # a worker that left (or restarts) has lost its cache
                routing.prefixes.forget(handle.worker_id)
        policy = dict(settings.model_policies).get(request.model, settings.policy)
        decision = choose(policy, request, registry.views(request.model), routing, now, tried)
        if decision is not None:
            routing.turn += 1
            routing.prefixes.record(decision.worker_id, request.block_hashes)
            if request.session:
                routing.sessions.pin(request.session, decision.worker_id, now)
            metrics.decisions.labels(decision.reason).inc()
        return decision

    async def _start(request: RequestView, generate: pb.GenerateRequest) -> tuple[WorkerHandle, Any, pb.GenerateReply]:
        """Pick a worker and read the first reply; retry elsewhere if the worker fails before any byte."""
        model = request.model
        tried: set[str] = set()
        last_error: ApiError | None = None
        for _ in range(settings.max_attempts):
            decision = _decide(request, frozenset(tried))
            if decision is None:
                break
            handle = registry.by_id(decision.worker_id)
            tried.add(decision.worker_id)
            if handle.stub is None:
                continue
            handle.inflight += 1
            call = handle.stub.Generate(generate, timeout=settings.request_timeout_s)
            # Released when the RPC ends however it ends (done, failed, cancelled, or never relayed).
            call.add_done_callback(lambda _call, h=handle: _release(h))
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as exc:
                last_error = _grpc_to_api(exc)
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    if _http_status(exc) is None:  # transport failure, not the agent's verdict
                        registry.mark_suspect(handle)
                    continue
                raise last_error from exc
            if first is grpc.aio.EOF:
                raise ApiError(502, "the worker ended the response without any data")
            return handle, call, first
        if last_error is not None:
            raise last_error
        raise ApiError(503, f"No ready worker serves `{model}` right now; try again shortly.", code="no_worker")

    async def _whole(
        handle: WorkerHandle, call: Any, first: pb.GenerateReply, model: str, headers: dict[str, str]
    ) -> Response:
        try:
            final = await call.read()
        except grpc.aio.AioRpcError as exc:
            err = _grpc_to_api(exc)
            metrics.requests.labels(model, str(err.status)).inc()
            return err.response(headers)
        finally:
            handle.served += 1
        body = first.response
        if final is not grpc.aio.EOF and final.HasField("final"):
            body = _fill_usage(body, final.final.usage)
            _count_tokens(metrics, model, final.final.usage)
        metrics.requests.labels(model, "200").inc()
        return Response(body, media_type="application/json", headers=headers)

    async def _relay_stream(
        handle: WorkerHandle, call: Any, first: pb.GenerateReply, model: str, wants_usage: bool
    ) -> AsyncIterator[bytes]:
        status = "200"
        try:
            reply = first
            while reply is not grpc.aio.EOF:
                if reply.HasField("chunks"):
                    items = [c for c in reply.chunks.items if wants_usage or not _is_usage_only(c)]
                    if items:  # one write for everything that arrived together
                        yield b"".join(b"data: " + c + b"\n\n" for c in items)
                elif reply.HasField("final"):
                    _count_tokens(metrics, model, reply.final.usage)
                reply = await call.read()
            yield b"data: [DONE]\n\n"
        except grpc.aio.AioRpcError as exc:
            err = _grpc_to_api(exc)  # after the first byte: an error event, never a silent cut
            status = str(err.status)
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            call.cancel()  # no-op when finished; aborts the engine request when the client left
            handle.served += 1
            metrics.requests.labels(model, status).inc()

    return app


async def _read_bounded(request: Request, limit: int) -> bytes:
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


def _group_row(info: pb.InfoReply | None) -> dict[str, Any] | None:
    """A shard group behind this worker (its rank 0), for operators; None for a single-host replica."""
    if info is None or not info.HasField("group"):
        return None
    group = info.group
    return {"name": group.name, "mode": group.mode, "backend": group.backend, "size": group.size,
            "peers": list(group.peers)}  # fmt: skip


def _release(handle: WorkerHandle) -> None:
    handle.inflight -= 1


def _http_status(exc: grpc.aio.AioRpcError) -> int | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "orchard-http-status":
            return int(value)
    return None


def _grpc_to_api(exc: grpc.aio.AioRpcError) -> ApiError:
    status = _http_status(exc)
    if status is not None:
        body = b""
        for key, value in exc.trailing_metadata() or ():
            if key == "orchard-error-bin":
                body = value if isinstance(value, bytes) else str(value).encode()
        return upstream_error(status, body)
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return ApiError(503, f"worker unavailable: {exc.details()}", code="worker_unavailable")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(504, "the worker did not finish in time", code="timeout")
    return ApiError(502, f"worker error {code.name}: {exc.details()}", code="worker_error")


def _is_usage_only(chunk: bytes) -> bool:
    if b'"usage"' not in chunk:
        return False
    try:
        payload = json.loads(chunk)
    except ValueError:
        return False
    return not payload.get("choices") and payload.get("usage") is not None


def _fill_usage(body: bytes, usage: pb.Usage) -> bytes:
    """The engine's usage stays as it is; a body without one gets ours."""
    if b'"usage"' in body and b'"usage": null' not in body and b'"usage":null' not in body:
        return body
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    payload["usage"] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    return json.dumps(payload).encode()


def _count_tokens(metrics: RouterMetrics, model: str, usage: pb.Usage) -> None:
    metrics.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
    metrics.tokens.labels(model, "completion").inc(usage.completion_tokens)
