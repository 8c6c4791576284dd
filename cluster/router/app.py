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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.gateway.gateway import Ask, Gateway, Outcome, Pass, Refusal
from cluster.gateway.keys import Key
from cluster.gateway.usage import UsageRow, refused_row
from cluster.router import ollama, operator, requestlog, schema
from cluster.router.activity import Activity
from cluster.router.demand import DemandManager
from cluster.router.errors import ApiError, ClientLeft, Unexpected, api_error
from cluster.router.forwarding import CLIENT_CLOSED, Ended, Forwarder, Started
from cluster.router.intake import Incoming, Parsed, Pick, Read, credentials, for_model, read_request
from cluster.router.metrics import RouterMetrics, model_label
from cluster.router.passthrough import Outlet, RelayResponse
from cluster.router.registry import Registry
from cluster.router.renewal import Renewer
from cluster.router.requestlog import RequestIds, request_id
from cluster.router.routes import GET_RESPONSE, RELAYED, Route, dialect_of
from cluster.router.validation import ResponseRetrieval, ResponsesRequest
from proto import orchard_pb2 as pb
from worker.shared.launch import RouterConfig

log = logging.getLogger(__name__)

WORKER_HEADER = "x-orchard-worker"


def create_app(
    registry: Registry,
    config: RouterConfig,
    gateway: Gateway | None = None,
    settle_s: float = 0.0,
    demand: DemandManager | None = None,
) -> FastAPI:
    """The router app over a registry and a gateway (both started and stopped with the app). `settle_s`: wait
    (at most that long) until every agent has told its state before serving — a router taking over from a
    running one must not answer "no such model" for the second it would otherwise not know them."""
    metrics = RouterMetrics()
    forwarder = Forwarder(registry, config, metrics)
    gateway = gateway or Gateway(None, registry.capacity, require_auth=False, max_queue=config.max_queue)
    activity = Activity()
    if demand is not None:
        demand.cold_starts, demand.cold_waiting = metrics.observe_cold_start, metrics.cold_waiting_by

    def ended(row: UsageRow) -> None:
        """Every request's one end record, read by every consumer: metrics, the dashboard, the request log."""
        label = model_label(row.model, registry.models())
        metrics.observe_end(row if label == row.model else replace(row, model=label))
        activity.observe(row)
        requestlog.write(row)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        await gateway.start()
        if demand is not None:
            await demand.start()
        renewing = _renewing(config)
        if settle_s:
            await registry.settled(settle_s)
        try:
            yield
        finally:
            if renewing is not None:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
            if demand is not None:  # its engines keep serving: the next router adopts them
                await demand.stop()
            await gateway.stop()
            await registry.stop()

    app = FastAPI(title="Orchard", lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    operator.install(app, registry, metrics, gateway, activity, demand.rows if demand else list)

    pipeline = _Pipeline(registry, config, metrics, forwarder, gateway, ended)
    schema.install(app, {"/orchard/drain": ("post", operator.DrainAsk)} | ollama.BODIES)
    for route in RELAYED:
        app.add_api_route(route.path, pipeline.endpoint(route), methods=["POST"], name=route.path)

    @app.get(GET_RESPONSE.path)
    async def get_response(request: Request, response_id: str) -> Response:
        """A stored response, from the worker that stored it (the router remembers which)."""
        return await pipeline.handle(request, GET_RESPONSE, lambda: pipeline.retrieval(response_id))

    ollama.install(app, pipeline.handle, registry, gateway, config.max_body_bytes)
    return app


def _renewing(config: RouterConfig) -> asyncio.Task[None] | None:
    """With the cluster CA at hand, the router renews the lab agents' certificates (cluster/router/renewal.py)."""
    if config.tls_path is None or config.ca_dir is None:
        return None
    renewer = Renewer(config.tls_path, Path(config.ca_dir).expanduser())
    return asyncio.create_task(renewer.run(), name="certificate renewal")


@dataclass
class _Pipeline:
    """One request's way through the router: key → intake → admission → forward → the end, accounted once."""

    registry: Registry
    config: RouterConfig
    metrics: RouterMetrics
    forwarder: Forwarder
    gateway: Gateway
    ended: Callable[[UsageRow], None]  # every request's end: metrics, the dashboard's activity, the log line

    def endpoint(self, route: Route) -> Callable[[Request], Awaitable[Response]]:
        async def relayed(request: Request) -> Response:
            return await self.handle(request, route, lambda: read_request(request, route, self.config.max_body_bytes))

        return relayed

    async def handle(self, request: Request, route: Route, read: Read, pick: Pick | None = None) -> Response:
        """The response to a request for `route`; `read` gives its body, parsed and validated; `pick`, where the
        body decides, the route it goes on (Ollama's generate: a chat, or a completion when raw)."""
        end = _End(self.gateway, self.ended, request_id(request.scope))
        try:
            end.key = self.gateway.authenticate(credentials(request))  # before reading anything
            parsed = await read()
            end.model, route, end.started_at = parsed.model, pick(parsed) if pick else route, time.monotonic()
            incoming = for_model(
                parsed,
                route,
                self.registry.models(),
                request.headers.get("x-session-id"),
                end.request_id,
                self.registry.awaited,
            )
            owner = end.key.team if end.key else ""
            incoming = replace(incoming, owner=owner, home=self._home(parsed, owner, end.started_at))
            ask = Ask(incoming.request_id, incoming.model, incoming.view.prompt_chars, parsed.fields.requested_tokens())
        except (ApiError, Refusal) as exc:  # turned away before the gateway counts it: logged, not a usage row
            end.refused(api_error(exc).status)
            return _refusal(exc, route)
        except ClientLeft:  # it closed its connection mid-body: logged and counted as a 499, not an incident
            end.refused(CLIENT_CLOSED)
            return Response(status_code=CLIENT_CLOSED)
        except asyncio.CancelledError:  # the client left while its body was read
            end.refused(CLIENT_CLOSED)
            raise
        try:
            end.granted = await self.gateway.admit(ask, end.key, self.config.request_timeout_s)
        except Refusal as exc:
            end.refused(exc.status, stored=True)  # who was turned away: admins see it in the usage rows
            return _refusal(exc, route)
        except TimeoutError:
            end.refused(504, stored=True)
            return _refusal(ApiError(504, "The request waited in the queue past its deadline.", code="timeout"), route)
        except asyncio.CancelledError:  # the client left while queued
            end.refused(CLIENT_CLOSED)
            raise
        finally:  # refused or timed out waiting too: the worst waits are the ones to see
            self.metrics.queue_wait.labels(end.model).observe(end.waited())
        return await self._answer(request, incoming, end)

    async def _answer(self, request: Request, incoming: Incoming, end: _End) -> Response:
        end.stream = incoming.stream
        try:
            response = await _unless_client_leaves(request, self._forward(incoming, end))
            if response is None:  # gone before the answer (or a stream's first byte): the engine's work is cancelled
                end(Ended(CLIENT_CLOSED, "", pb.Usage(), counted=False))
                return Response(status_code=CLIENT_CLOSED)
            return response
        except BaseException:  # whatever went wrong, the slot and the reservation are given back
            end(Ended(500, "", pb.Usage(), counted=True))
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

    async def _forward(self, incoming: Incoming, end: _End) -> Response:
        assert end.granted is not None  # admitted
        headers = end.granted.headers
        try:
            started = await self.forwarder.start(incoming, self.config.request_timeout_s - end.waited())
        except ApiError as exc:
            end(Ended(exc.status, "", pb.Usage(), counted=True))
            return exc.response(headers, incoming.dialect)
        end.first_byte, end.worker = started.at, started.handle.worker_id
        headers = {WORKER_HEADER: started.handle.worker_id, **headers}
        if not incoming.stream:
            return await self.forwarder.whole(started, incoming, headers, end)
        started.handle.ttft.add(started.at, started.at - end.started_at)
        outlet = Outlet()
        relay = self.forwarder.relay(started, incoming, end, outlet)
        # The background task runs even when the client left before the body started streaming.
        return RelayResponse(relay, outlet, headers=headers, background=BackgroundTask(end.close, started))


def _refusal(exc: ApiError | Refusal, route: Route) -> Response:
    return api_error(exc).response(exc.headers if isinstance(exc, Refusal) else None, route.dialect)


def _unknown_response(response_id: str, param: str | None) -> ApiError:
    return ApiError(
        404,
        f"No response with id `{response_id[:128]}` is known to this router for your key (made "
        "elsewhere, by another team, with store: false, or forgotten after a week).",
        param=param,
        code="response_not_found",
    )


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


class _End:
    """A request's one end record, built exactly once however it ends (answered, refused, failed, client gone)
    and handed to `ended`; an admitted request's slot, reservation and usage row go through the gateway on the
    way."""

    def __init__(self, gateway: Gateway, ended: Callable[[UsageRow], None], request_id: str) -> None:
        self.gateway, self.ended, self.request_id = gateway, ended, request_id
        self.key: Key | None = None
        self.model = "?"
        self.granted: Pass | None = None
        self.started_at = time.monotonic()  # once its body is read: where its wait and TTFT count from
        self.first_byte: float | None = None
        self.worker = ""  # the one that sent the first byte
        self.stream = False
        self.done = False

    def waited(self) -> float:
        return time.monotonic() - self.started_at

    def refused(self, status: int, stored: bool = False) -> None:
        """Turned away before any worker; `stored`: by the admission, a usage row admins see."""
        if not self._first():
            return
        row = refused_row(self.gateway.clock(), self.request_id, self.key, self.model, status)
        if stored:
            self.gateway.record(row)
        self.ended(row)

    def __call__(self, ended: Ended) -> None:
        if not self._first():
            return
        assert self.granted is not None  # forwarded requests were admitted
        usage = ended.usage
        prompt = usage.prompt_tokens if ended.counted else None  # None: the gateway's admission estimate
        ttft = self.first_byte - self.started_at if self.first_byte is not None else None
        outcome = Outcome(
            ended.status,
            ended.worker or self.worker or None,
            prompt,
            usage.completion_tokens,
            usage.cached_prompt_tokens,
            ttft,
            self.waited(),  # TTFT's start and clock: a row's duration is never shorter than its TTFT
        )
        row = self.gateway.finish(self.granted, outcome)
        self.ended(replace(row, stream=self.stream, itl_s=ended.itl_s))

    async def close(self, started: Started) -> None:
        """A stream's response background. A coroutine, so Starlette runs it on the event loop: a plain function
        it would run in a worker thread, beside the loop that owns the call, the timers and the admission queue."""
        started.stop()  # no-op when finished; aborts the engine request when the client left
        self(Ended(CLIENT_CLOSED, "", pb.Usage(), counted=False))  # only if the relay never ran (client left first)

    def _first(self) -> bool:
        first, self.done = not self.done, True
        return first


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _answer_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response(dialect=dialect_of(request.url.path))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own headers kept: a 405 names the methods the path allows (`Allow`, RFC 9110)
        return ApiError(exc.status_code, str(exc.detail)).response(exc.headers, dialect_of(request.url.path))

    app.add_middleware(Unexpected, dialect_of=dialect_of)
    app.add_middleware(RequestIds)  # outermost: the incident 500 carries the id too
