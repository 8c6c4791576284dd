"""The operator's side of the router: /health, /metrics, /v1/models, /orchard/workers, /orchard/drain, and the
dashboard (/dashboard, fed by /orchard/dashboard.json). Everything but /health and the dashboard's page (which
holds no data) needs an admin key once keys exist."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from cluster.gateway.gateway import Gateway, Refusal
from cluster.router.activity import Activity
from cluster.router.errors import ApiError, api_error
from cluster.router.intake import credentials, read_json
from cluster.router.metrics import RouterMetrics
from cluster.router.registry import SAMPLE_STALE_S, Registry, WorkerHandle
from cluster.router.rows import (
    DashboardReply,
    GroupRow,
    ModelFacts,
    OnDemandRow,
    Reachability,
    WorkerRow,
    WorkersReply,
    model_rows,
)
from cluster.router.validation import validate
from proto import orchard_pb2 as pb

PAGES = resources.files("cluster.router") / "pages"


class DrainAsk(BaseModel):
    worker: str = Field(min_length=1, max_length=256)  # id, address or host
    draining: bool = True


DRAIN_BODY_BYTES = 4096  # {"worker": ..., "draining": ...}: read as any body is (JSON, bounded, a deadline)


def install(
    app: FastAPI,
    registry: Registry,
    metrics: RouterMetrics,
    gateway: Gateway,
    activity: Activity,
    on_demand: Callable[[], list[OnDemandRow]] = list,
) -> None:
    def lab() -> list[WorkerRow]:
        now = time.monotonic()
        return [worker_row(handle, now) for handle in registry.workers.values()]

    def queued() -> dict[str, int]:
        return {model: gateway.admission.waiting(model) for model in registry.models()}

    def refused(request: Request) -> Response | None:
        try:
            gateway.check_admin(credentials(request))
        except Refusal as exc:
            return api_error(exc).response()
        return None

    metrics.watch(lab, queued)
    _public(app, registry, gateway)
    _lab_views(app, registry, metrics, activity, _Views(lab, queued, refused, gateway, on_demand))
    _drain(app, registry, refused)


@dataclass(frozen=True)
class _Views:
    lab: Callable[[], list[WorkerRow]]
    queued: Callable[[], dict[str, int]]
    refused: Callable[[Request], Response | None]  # the refusal of a caller without an admin key, or None
    gateway: Gateway
    on_demand: Callable[[], list[OnDemandRow]]


def _public(app: FastAPI, registry: Registry, gateway: Gateway) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        ready = registry.ready_count()
        body = {"status": "ok" if ready else "unavailable", "workers_ready": ready}
        return JSONResponse(body, status_code=200 if ready else 503)

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
                "capabilities": list(m.capabilities) if m.capabilities_known else None,
                "state": registry.state_of(name),  # loaded | loading | unloaded (on-demand, loads on request)
            }
            for name, m in sorted(registry.models().items())
        ]
        return JSONResponse({"object": "list", "data": data})


def _lab_views(app: FastAPI, registry: Registry, metrics: RouterMetrics, activity: Activity, views: _Views) -> None:
    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        if no := views.refused(request):  # worker addresses, models and teams: an operator's, once keys are on
            return no
        metrics.expect(registry.models())
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)  # Prometheus's text format, versioned

    @app.get("/orchard/workers")
    async def workers(request: Request) -> Response:
        if no := views.refused(request):
            return no
        reply = WorkersReply(workers=views.lab(), router_pid=os.getpid(), on_demand=views.on_demand())
        return Response(reply.model_dump_json(), media_type="application/json")

    @app.get("/orchard/dashboard.json")
    async def dashboard_data(request: Request) -> Response:
        if no := views.refused(request):
            return no
        rows, teams = views.lab(), sorted(activity.teams.values(), key=lambda t: -t.requests)
        reply = DashboardReply(
            at=time.time(),
            workers=rows,
            models=model_rows(rows),
            errors=list(activity.errors),
            teams=teams,
            queued=views.queued(),
            on_demand=views.on_demand(),
        )
        return Response(reply.model_dump_json(), media_type="application/json", headers={"cache-control": "no-store"})

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        page = PAGES.joinpath("dashboard.html").read_text()  # whether to ask for a key before the first fetch:
        page = page.replace('data-key-needed="?"', f'data-key-needed="{str(bool(views.gateway.auth_on)).lower()}"')
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @app.get("/dashboard.js", include_in_schema=False)
    async def dashboard_script() -> Response:
        script = PAGES.joinpath("dashboard.js").read_text()
        return Response(script, media_type="text/javascript", headers=_PAGE_HEADERS)


def _drain(app: FastAPI, registry: Registry, refused: Callable[[Request], Response | None]) -> None:
    @app.post("/orchard/drain")
    async def drain(request: Request) -> Response:
        """Stop (or resume) sending new requests to one worker; its requests in flight finish."""
        if no := refused(request):
            return no
        ask = validate(await read_json(request, DRAIN_BODY_BYTES), DrainAsk)
        found = registry.find(ask.worker)
        if not found:
            return ApiError(404, f"no worker `{ask.worker}`", code="unknown_worker").response()
        if len(found) > 1:
            names = ", ".join(sorted(h.worker_id for h in found))
            return ApiError(
                409, f"`{ask.worker}` names {len(found)} workers ({names}); give one of those", code="ambiguous_worker"
            ).response()
        handle = found[0]
        try:
            await registry.drain(handle, ask.draining)
        except grpc.aio.AioRpcError as exc:
            return ApiError(503, f"worker {handle.address} did not answer: {exc.code().name}").response()
        return Response(worker_row(handle, time.monotonic()).model_dump_json(), media_type="application/json")


# The page and its script come from here only; the data is fetched with the admin key the user types.
_PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
}


def worker_row(handle: WorkerHandle, now: float) -> WorkerRow:
    """One worker as operators see it."""
    info, sample = handle.info or pb.InfoReply(), handle.sample or pb.LoadSample()
    group = None
    if info.HasField("group"):
        g = info.group
        group = GroupRow(name=g.name, mode=g.mode, backend=g.backend, size=g.size, peers=list(g.peers))
    ttft = handle.ttft.median(now)
    return WorkerRow(
        address=handle.address,
        worker_id=handle.worker_id,
        state=handle.state(now),
        models=list(handle.models),
        engine=info.engine,
        chip=info.chip,
        os=info.os,
        memory_bytes=info.memory_bytes,
        memory_available_bytes=sample.memory_available_bytes,
        inflight=handle.inflight,
        served=handle.served,
        load=handle.load,
        host=info.hostname,
        engine_restarts=sample.engine_restarts,
        tokens_per_s=handle.tokens_per_s if handle.connected else 0.0,
        ttft_p50_s=ttft,
        detail=_detail(handle, sample, now),
        group=group,
        breaker=handle.breaker.state(now).value,
        draining=sample.draining,
        model_facts=_facts(info),
    )


def _detail(handle: WorkerHandle, sample: pb.LoadSample, now: float) -> str:
    """Why it is in its state: the agent's own word while connected and telling, else why the router doubts it
    (a sample from before the connection broke or went silent is stale)."""
    if not handle.connected:
        return handle.last_error or sample.state_detail
    state = handle.state(now)
    if state is Reachability.HUNG and handle.silent_for(now) < SAMPLE_STALE_S:  # then its engine is
        return f"its engine failed {sample.health_failures} health check(s) in a row"
    if state is Reachability.HUNG:
        return f"no state from its agent for {handle.silent_for(now):.0f} s"
    if state is Reachability.HALF_OPEN:
        return "failed lately; one request probes it"
    return sample.state_detail


def _facts(info: pb.InfoReply) -> list[ModelFacts]:
    return [
        ModelFacts(
            name=m.name,
            context_length=m.max_model_len,
            capabilities=list(m.capabilities) if m.capabilities_known else None,
        )
        for m in info.models
    ]
