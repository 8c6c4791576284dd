"""The router's side of models that follow demand (issue 30): the effects of cluster/placement/demand.py.

A request for an on-demand model no worker serves waits here (`warm`, inside the request's deadline) while one
load starts for every request that waits for it: the host's agent starts a child agent (Load), which joins the
registry like any worker. Every TICK_S a snapshot of the lab — the catalog's hosts and needs, the engines loaded
and loading, the queues — gives what to unload (keep_alive, scaling down) and what to load (scaling up, minimum
replicas). An unload drains the engine, waits for what is in flight, then asks the host's agent (Unload). After
a router restart the agents' Info lists their children (on each agent's first Info): they are adopted, and
taken off drain, not started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from cluster.gateway.gateway import Refusal
from cluster.placement import demand
from cluster.placement.offers import DemandCatalog, Offered
from cluster.router.registry import Registry, WorkerHandle
from cluster.router.rows import OnDemandRow
from proto import orchard_pb2 as pb
from worker.shared import errors
from worker.shared.states import EngineState

log = logging.getLogger(__name__)

TICK_S = 1.0
LOAD_RPC_S = 90.0  # the child agent listens within this (its engine starts after)
DRAIN_S = 120.0  # an engine being unloaded gets this long to finish what it is doing
RETRY_S = 1.0  # after a host's "no room yet"
GONE_S = 30.0  # an on-demand engine's agent silent this long is forgotten (its memory free again)
GB = 1e9


class NoRoomYet(Exception):
    """The host's agent counted less room than the router did (an unload still ending): the load is decided again."""


@dataclass
class _Engine:
    """An on-demand engine this router started or adopted."""

    model: str
    host: str
    address: str = ""  # "" while its load runs
    unloading: bool = False
    leaving: bool = False  # chosen to make room: unloading as far as any decision is concerned
    joined: float = 0.0  # monotonic: when its agent joined the registry


@dataclass
class DemandManager:
    catalog: DemandCatalog
    registry: Registry
    waiting: Callable[[str], int] = lambda model: 0  # requests queued for a model in the gateway
    clock: Callable[[], float] = time.monotonic
    engines: dict[tuple[str, str], _Engine] = field(default_factory=dict)  # (model, host) → engine
    loads: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # one load at a time per model
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    cold: dict[str, int] = field(default_factory=dict)  # requests waiting for a cold start, per model
    trends: dict[str, demand.Trend] = field(default_factory=dict)
    cold_starts: Callable[[str, float], None] = lambda model, waited_s: None  # metrics: a cold request got its engine
    cold_waiting: Callable[[str, int], None] = lambda model, delta: None  # metrics: requests waiting for a load
    adopted: set[str] = field(default_factory=set)  # host agents whose children were looked at (once each)
    used_at: dict[str, float] = field(default_factory=dict)  # an unloaded model's last use (monotonic)
    retry_at: dict[str, float] = field(default_factory=dict)  # a model's next load, after its host said "no room yet"
    _loop: asyncio.Task[None] | None = None

    def offered(self) -> tuple[pb.ModelInfo, ...]:
        return tuple(pb.ModelInfo(name=m.name, source=m.source, engine=m.engine) for m in self.catalog.models)

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="on-demand models")

    async def stop(self) -> None:
        for task in [self._loop, *self.tasks, *self.loads.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # --- the request path ----------------------------------------------------------------------------------

    async def warm(self, model: str, timeout_s: float) -> None:
        """Return once `model` has a ready worker, starting its load if none runs; Refusal (503) naming why it
        cannot, TimeoutError past `timeout_s`. Many requests, one load."""
        if self.catalog.model(model) is None:
            return
        began = self.clock()
        deadline = began + timeout_s
        self.cold[model] = self.cold.get(model, 0) + 1
        self.cold_waiting(model, 1)
        try:
            while not self._ready(model):
                if (why := self._failed(model)) is not None:
                    raise Refusal(503, f"The model `{model}` could not be loaded: {why}", "model_load_failed")
                retry = self.retry_at.get(model, 0.0) <= self.clock()
                if model not in self.loads and retry:  # none running (a finished one's may be gone again: anew)
                    decided = demand.cold_start(self.snapshot(), model)
                    if isinstance(decided, demand.Refuse):
                        raise Refusal(503, decided.why, "model_does_not_fit", {"retry-after": "30"})
                    if decided is not None:
                        self._load(decided)
                if self.clock() >= deadline:
                    raise TimeoutError
                await asyncio.sleep(0.05)
        finally:
            self.cold[model] -= 1
            self.cold_waiting(model, -1)
        self.cold_starts(model, self.clock() - began)

    def _ready(self, model: str) -> bool:
        return self.registry.capacity(model).slots > 0

    def _failed(self, model: str) -> str | None:
        """Why the model's load failed: its task's error, or its engine's failed state. A load that ended is let
        go here (not only by the next round): a request arriving as its engine is unloaded again must start one."""
        task = self.loads.get(model)
        if task is not None and task.done():
            self.loads.pop(model, None)
            failure = None if task.cancelled() else task.exception()
            if isinstance(failure, NoRoomYet):
                self.retry_at[model] = self.clock() + RETRY_S  # the host's memory frees as an unload ends
            elif failure is not None:
                return str(failure)
        for engine in self.engines.values():
            handle = self.registry.workers.get(engine.address) if engine.model == model else None
            if handle is not None and handle.sample is not None and handle.sample.state == EngineState.FAILED.to_wire():
                return handle.sample.state_detail or "its engine failed"
        return None

    # --- the lab as the decisions see it -------------------------------------------------------------------

    def snapshot(self) -> demand.Lab:
        now = self.clock()
        hosts = []
        for room in self.catalog.hosts:
            agent = self.registry.workers.get(room.agent)
            reported = agent.info.usable_memory_bytes if agent and agent.info else 0
            usable = (
                min(room.usable_bytes, reported) if room.usable_bytes and reported else room.usable_bytes or reported
            )
            engines = (
                [demand.Engine(room.pinned_model, room.pinned_bytes / GB, pinned=True)] if room.pinned_bytes else []
            )
            engines += [self._engine_view(e) for e in self.engines.values() if e.host == room.label]
            reachable = agent is not None and agent.connected
            hosts.append(demand.Host(room.label, usable / GB, tuple(engines), reachable))
        offers = {m.name: _offer(m) for m in self.catalog.models}
        waiting = {m.name: self.waiting(m.name) + self.cold.get(m.name, 0) for m in self.catalog.models}
        scaling = demand.Scaling(**self.catalog.scaling.model_dump())
        return demand.Lab(now, tuple(hosts), offers, waiting, scaling)

    def _engine_view(self, engine: _Engine) -> demand.Engine:
        need = self.catalog.model(engine.model)
        handle = self.registry.workers.get(engine.address) if engine.address else None
        ready = handle is not None and handle.ready(self.clock())
        leaving = engine.unloading or engine.leaving
        state: demand.EngineState = "unloading" if leaving else "ready" if ready else "loading"
        return demand.Engine(
            engine.model,
            (need.need_bytes if need else 0) / GB,
            state=state,
            inflight=handle.inflight if handle else 0,
            last_used=handle.last_used if handle else self.clock(),
        )

    def rows(self) -> list[OnDemandRow]:
        """Every on-demand model on every host holding it, or once as unloaded: for status and the dashboard."""
        now, out = self.clock(), []
        for offered in self.catalog.models:
            mine = [e for e in self.engines.values() if e.model == offered.name]
            waiting = self.cold.get(offered.name, 0)
            for engine in mine:
                view = self._engine_view(engine)
                state: Literal["loaded", "loading", "unloading"] = "loaded" if view.state == "ready" else view.state
                handle = self.registry.workers.get(engine.address)
                idle = now - view.last_used if handle is not None else None
                out.append(
                    OnDemandRow(
                        model=offered.name,
                        host=engine.host,
                        state=state,
                        inflight=view.inflight,
                        idle_s=idle,
                        need_gb=view.need_gb,
                        waiting=waiting,
                    )
                )
            if not mine:
                used = self.used_at.get(offered.name)
                out.append(
                    OnDemandRow(
                        model=offered.name,
                        state="unloaded",
                        idle_s=None if used is None else now - used,
                        need_gb=offered.need_bytes / GB,
                        waiting=waiting,
                    )
                )
        return out

    # --- effects -------------------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _load(self, decided: demand.Load) -> None:
        for victim in decided.evict:  # marked now: the next decision must not count on the same room
            if (engine := self.engines.get((victim, decided.host))) is not None:
                engine.leaving = True
        self.engines[(decided.model, decided.host)] = _Engine(decided.model, decided.host)
        self.loads[decided.model] = asyncio.create_task(self._loaded(decided), name=f"load {decided.model}")

    async def _loaded(self, decided: demand.Load) -> None:
        key = (decided.model, decided.host)
        try:
            log.info("loading %s on %s: %s", decided.model, decided.host, decided.why)
            await asyncio.gather(
                *(self._unload(victim, decided.host, f"room for {decided.model}") for victim in decided.evict)
            )
            address = await self._start_child(decided.model, decided.host)
        except BaseException:
            self.engines.pop(key, None)
            raise
        self.engines[key].address, self.engines[key].joined = address, self.clock()
        self.registry.add(address, pin_address=self.catalog.host(decided.host).agent)

    async def _start_child(self, model: str, label: str) -> str:
        room = self.catalog.host(label)
        offered = self.catalog.model(model)
        place = next((p for p in offered.places if p.host == label), None) if offered else None
        agent = self.registry.workers.get(room.agent)
        if offered is None or place is None or agent is None or agent.stub is None:
            raise RuntimeError(f"host {label} cannot load {model}")
        request = pb.LoadRequest(model=model, argv=list(place.argv), need_bytes=offered.need_bytes)
        try:
            reply = await agent.stub.Load(request, timeout=LOAD_RPC_S)
        except grpc.aio.AioRpcError as exc:
            if b'"insufficient_memory"' in errors.error_body(exc.trailing_metadata()):
                raise NoRoomYet(exc.details()) from None  # the host's own count: decide again, later
            raise RuntimeError(f"{label}: {exc.details() or exc.code().name}") from None
        return f"{room.agent.rpartition(':')[0]}:{reply.port}"

    async def _unload(self, model: str, label: str, why: str) -> None:
        engine = self.engines.get((model, label))
        if engine is None or engine.unloading:
            return
        engine.unloading = True
        log.info("unloading %s on %s: %s", model, label, why)
        try:
            handle = self.registry.workers.get(engine.address)
            if handle is not None:
                await _drained(self.registry, handle)
            agent = self.registry.workers.get(self.catalog.host(label).agent)
            if agent is not None and agent.stub is not None:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await agent.stub.Unload(pb.UnloadRequest(model=model), timeout=DRAIN_S)
            if handle is not None:
                self.used_at[model] = max(self.used_at.get(model, 0.0), handle.last_used)
            await self.registry.remove(engine.address)
        finally:
            if self.engines.get((model, label)) is engine:  # a new load there may have taken the key since
                self.engines.pop((model, label))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._adopt()
                self._tick()
            except Exception:  # one bad round must not end the loop
                log.exception("on-demand round failed")

    def _tick(self) -> None:
        for model, task in list(self.loads.items()):
            if task.done() and not self.cold.get(model):
                self.loads.pop(model)
                if not task.cancelled() and task.exception() is not None:
                    log.warning("load of %s failed: %s", model, task.exception())
        for engine in list(self.engines.values()):  # an engine that died or never came up holds no memory
            if (why := self._gone(engine)) is not None:
                self._spawn(self._unload(engine.model, engine.host, why))
        lab = self.snapshot()
        self.trends = demand.observe(self.trends, lab)
        decisions: list[demand.Load | demand.Unload] = [*demand.expired(lab), *demand.scale(lab, self.trends)]
        decisions += demand.below_minimum(lab)
        for decided in decisions:
            if isinstance(decided, demand.Unload):
                self._spawn(self._unload(decided.model, decided.host, decided.why))
            elif decided.model not in self.loads:
                self._load(decided)

    def _gone(self, engine: _Engine) -> str | None:
        """Why an engine is to be forgotten: its agent unreachable for GONE_S, or its engine failed."""
        handle = self.registry.workers.get(engine.address) if engine.address and not engine.unloading else None
        if handle is None:
            return None
        if handle.sample is not None and handle.sample.state == EngineState.FAILED.to_wire():
            return f"its engine failed: {handle.sample.state_detail}"
        if not handle.connected and self.clock() - max(engine.joined, handle.last_used) > GONE_S:
            return f"its agent has not answered for {GONE_S:.0f} s"
        return None

    def _adopt(self) -> None:
        """Children an agent ran before this router started (a restart, a hand-over): followed again. Each agent
        is looked at once, on its first Info: later its children are the ones this router started."""
        for room in self.catalog.hosts:
            agent = self.registry.workers.get(room.agent)
            if agent is None or agent.info is None or room.agent in self.adopted:
                continue
            self.adopted.add(room.agent)
            for child in agent.info.children:
                key = (child.model, room.label)
                if key not in self.engines and self.catalog.model(child.model) is not None:
                    address = f"{room.agent.rpartition(':')[0]}:{child.port}"
                    self.engines[key] = _Engine(child.model, room.label, address, joined=self.clock())
                    self._spawn(_undrained(self.registry, self.registry.add(address, pin_address=room.agent)))
                    log.info("adopted the running engine of %s on %s", child.model, room.label)


async def _undrained(registry: Registry, handle: WorkerHandle) -> None:
    """An adopted engine takes requests: a router stopped while it drained it for an unload left it draining."""
    for _ in range(20):  # its channel may not be up yet
        with contextlib.suppress(grpc.aio.AioRpcError, AssertionError):
            await registry.drain(handle, False)
            return
        await asyncio.sleep(0.5)


async def _drained(registry: Registry, handle: WorkerHandle) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError, AssertionError):
        await registry.drain(handle, True)
    deadline = time.monotonic() + DRAIN_S
    while handle.inflight and time.monotonic() < deadline:  # noqa: ASYNC110 - a count the request path keeps
        await asyncio.sleep(0.1)


def _offer(model: Offered) -> demand.Offer:
    return demand.Offer(
        model.name,
        model.need_bytes / GB,
        model.keep_alive_s,
        model.min_replicas,
        model.max_replicas,
        tuple(p.host for p in model.places),
    )
