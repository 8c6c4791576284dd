"""Live worker state for the router, fed by each agent's Info call and Watch stream, and each worker's circuit
breaker, fed by the request path.

A worker whose stream breaks is not ready until it reconnects; reconnection backs off to at most a second, so a
returning agent is used within about a second of its readiness. gRPC keepalive pings find a host that went
silent (asleep, unplugged, stopped) within seconds, even with no request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cluster.gateway.queue import Capacity
from cluster.pki import pins
from cluster.router.breaker import Breaker, BreakerState
from cluster.router.recent import Window, token_rate
from cluster.router.rows import Reachability
from cluster.router.tap import TapClient
from cluster.routing.choose import WorkerView
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.shared import tls
from worker.shared.load import Load
from worker.shared.states import EngineState

log = logging.getLogger(__name__)

INFO_DEADLINE_S = 5.0
SAMPLE_STALE_S = 5.0
HUNG_HEALTH_FAILURES = 2  # a ready engine that failed this many health checks in a row is hung: shown so, not chosen
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 1.0
TAP_ASK_AGAIN_S = 60.0  # an agent without taps may have been upgraded since
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 5_000),  # a ping every 5 s; no answer within 3 s: the connection is dead
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),  # gRPC's own default backs off up to 120 s
    ("grpc.max_reconnect_backoff_ms", 1_000),
)
RENEW_CHECK_S = 2.0  # how often the router looks for a rotated identity (one stat per file)
LEARN_S = 10.0  # a restarted router waits this long for every agent's models before it calls a name unknown
DEFAULT_SLOTS = 64  # an agent that does not say how many requests it takes at once
REASON_CHARS = 300  # why a worker is unreachable, as kept for its row and logged


@dataclass
class WorkerHandle:
    """One agent as the router knows it. Mutated only by the registry's tasks and the request path."""

    address: str
    channel: grpc.aio.Channel | None = None
    stub: pb_grpc.WorkerStub | None = None
    info: pb.InfoReply | None = None
    sample: pb.LoadSample | None = None
    sample_at: float = 0.0
    connected: bool = False
    inflight: int = 0
    served: int = 0
    breaker: Breaker = field(default_factory=Breaker)
    tokens_per_s: float = 0.0  # generated, between its last two samples
    ttft: Window = field(default_factory=Window)  # time to first token of its streams, lately
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    last_error: str = ""  # why the last attempt to reach it failed (e.g. the TLS handshake's); "" once connected
    load: Load = field(default_factory=Load)  # its engine's figures, from its last sample
    pin: str = ""  # the name its certificate must carry (cluster/pki/pins.py); "": its address, as dialled
    pin_address: str = ""  # an on-demand child agent's: its host agent's address, whose pin (and identity) it has
    last_used: float = 0.0  # monotonic: when a request last started or ended here
    tap: TapClient | None = field(default=None, repr=False)  # its shared reply stream while connected
    _models: tuple[tuple[str, ...], pb.InfoReply | None] = field(default=((), None), repr=False, compare=False)

    @property
    def worker_id(self) -> str:
        return self.info.worker_id if self.info and self.info.worker_id else self.address

    @property
    def max_concurrency(self) -> int:
        return self.info.max_concurrency if self.info and self.info.max_concurrency else DEFAULT_SLOTS

    @property
    def models(self) -> tuple[str, ...]:
        """Read for every worker on every request: kept until `info` is replaced."""
        names, of = self._models
        if of is not self.info:
            names = tuple(m.name for m in self.info.models) if self.info else ()
            self._models = names, self.info
        return names

    def ready(self, now: float) -> bool:
        return (
            self.connected
            and self.sample is not None
            and _is_ready(self.sample)
            and not self.sample.draining
            and self.sample.health_failures < HUNG_HEALTH_FAILURES
            and now - self.sample_at < SAMPLE_STALE_S
            and self.breaker.allows(now)
        )

    def view(self, now: float) -> WorkerView:
        return WorkerView(worker_id=self.worker_id, ready=self.ready(now), inflight=self.inflight, load=self.load)

    def state(self, now: float) -> EngineState | Reachability:
        """What the operator sees: the engine's own state only while the router has reason to believe it."""
        if not self.connected:
            return Reachability.UNREACHABLE
        if self.sample is None:
            return Reachability.CONNECTING
        if self.silent_for(now) >= SAMPLE_STALE_S:
            return Reachability.HUNG  # connected, but the agent has stopped telling
        breaker = self.breaker.state(now)
        if breaker is BreakerState.OPEN:
            return Reachability.SUSPECT
        engine = EngineState.from_wire(self.sample.state) or Reachability.CONNECTING
        if engine is EngineState.READY and self.sample.health_failures >= HUNG_HEALTH_FAILURES:
            return Reachability.HUNG  # the agent answers; its engine does not
        if engine is EngineState.READY and breaker is BreakerState.HALF_OPEN:
            return Reachability.HALF_OPEN
        return engine

    def silent_for(self, now: float) -> float:
        """Seconds since the agent's last state sample."""
        return now - self.sample_at


def _merge_capabilities(seen: pb.ModelInfo, model: pb.ModelInfo) -> None:
    """What every worker that knows says (a request may land on any); one that does not know yet (its engine not
    planned, an older agent) neither adds nor takes away."""
    if not model.capabilities_known:
        return
    if seen.capabilities_known:
        seen.capabilities[:] = [c for c in seen.capabilities if c in model.capabilities]
    else:
        seen.capabilities[:] = model.capabilities
        seen.capabilities_known = True


class Registry:
    """Owns one channel and one watch task per worker address."""

    def __init__(
        self,
        addresses: list[str],
        watch_interval_s: float = 1.0,
        tls_dir: Path | None = None,
        close_grace_s: float = 900.0,
        expected: tuple[str, ...] = (),
        offered: tuple[pb.ModelInfo, ...] = (),
    ) -> None:
        """`offered`: on-demand models, listed (and routed to a cold start) while no worker serves them."""
        self.watch_interval_s = watch_interval_s
        self.expected = frozenset(expected)  # the models the lab serves by its hosts file
        self.started_at = time.monotonic()
        self.tls_dir = tls_dir  # our identity towards the agents (mutual TLS); None: plaintext, loopback only
        self.close_grace_s = close_grace_s  # a replaced channel's calls get this long to finish
        self.workers = {address: WorkerHandle(address) for address in addresses}
        self.offered = {m.name: m for m in offered}
        self._merged: tuple[tuple[pb.InfoReply | None, ...], dict[str, pb.ModelInfo]] = ((), {})
        self._watcher: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open channels inside the running loop (a grpc.aio channel belongs to the loop that made it)."""
        dialled = self._pinned()
        for handle in self.workers.values():
            handle.pin = dialled.get(handle.address, "")
            self._open(handle)
        if self.tls_dir is not None:
            self._watcher = asyncio.create_task(self._renew_on_change(self.tls_dir), name="tls identity")

    def _pinned(self) -> dict[str, str]:
        """The name each pinned agent's certificate must carry (a revoked one's: a name none carries). PinsError
        when the record is damaged (the router's start checks it; later the last good pins are kept)."""
        if self.tls_dir is None:
            return {}
        return {address: pin.dialled for address, pin in pins.read(self.tls_dir).agents.items()}

    def _open(self, handle: WorkerHandle) -> None:
        options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
        if handle.pin:
            options.append(("grpc.ssl_target_name_override", handle.pin))
        handle.channel = tls.channel(handle.address, self.tls_dir, options)
        handle.stub = pb_grpc.WorkerStub(handle.channel)
        handle.task = asyncio.create_task(self._follow(handle), name=f"watch {handle.address}")

    async def _renew_on_change(self, folder: Path) -> None:
        """When `cluster certs rotate` replaced our identity: new channels to every agent; when a pin moved (the
        agent's certificate renewed or revoked): a new channel to that agent. Calls in flight finish on the old
        channels (their certificates are still valid), which then close; a revoked agent's close at once. What
        cannot be applied now is tried again at the next look."""
        seen = (tls.identity_stamp(folder), pins.stamp(folder))
        while True:
            await asyncio.sleep(RENEW_CHECK_S)
            stamps = (tls.identity_stamp(folder), pins.stamp(folder))
            if stamps[0] is None or stamps == seen:
                continue
            try:
                dialled = self._pinned()
                for handle in list(self.workers.values()):
                    pin = dialled.get(handle.pin_address or handle.address, "")
                    if stamps[0] != seen[0] or pin != handle.pin:
                        self._reopen(handle, pin)
            except (tls.TlsError, pins.PinsError) as exc:
                log.warning("TLS identity or pins changed but cannot be read (%s); keeping the current ones", exc)
                continue
            if stamps[0] != seen[0]:
                log.info("TLS identity renewed: new connections to agents present the new certificate")
            seen = stamps

    def _reopen(self, handle: WorkerHandle, pin: str) -> None:
        old_channel, old_task, old_pin = handle.channel, handle.task, handle.pin
        handle.pin = pin
        try:
            self._open(handle)
        except tls.TlsError:
            handle.pin = old_pin
            raise
        if pin != old_pin:
            what = {pins.REVOKED: "certificate revoked: refused from now on", "": "no longer pinned"}
            log.info("worker %s: %s", handle.address, what.get(pin, "pinned to its newest certificate"))
        if old_task is not None:
            old_task.cancel()
        if old_channel is not None:
            grace = 0.0 if pin == pins.REVOKED else self.close_grace_s
            closing = asyncio.create_task(old_channel.close(grace=grace))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def add(self, address: str, pin_address: str = "") -> WorkerHandle:
        """A worker that joins now (an on-demand child agent): followed like the others from this moment."""
        if (known := self.workers.get(address)) is not None:
            return known
        handle = WorkerHandle(address, pin_address=pin_address, last_used=time.monotonic())
        handle.pin = self._pinned().get(pin_address or address, "") if self.tls_dir else ""
        self.workers[address] = handle
        self._open(handle)
        return handle

    async def remove(self, address: str) -> None:
        """A worker that left (an unloaded child agent): no longer followed, listed or chosen."""
        handle = self.workers.pop(address, None)
        if handle is None:
            return
        if handle.task is not None:
            handle.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handle.task
        if handle.channel is not None:
            await handle.channel.close(grace=1.0)

    async def settled(self, timeout_s: float) -> bool:
        """Wait until every agent has sent its Info and a state sample (or `timeout_s` passed); whether all did."""
        deadline = time.monotonic() + timeout_s
        while any(h.info is None or h.sample is None for h in self.workers.values()):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self) -> None:
        for task in [self._watcher, *self._closing]:  # channels left from a rotation are closed now too
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for handle in self.workers.values():
            if handle.task:
                handle.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handle.task
            if handle.channel is not None:
                await handle.channel.close()

    def views(self, model: str) -> list[WorkerView]:
        """The model's workers; those with a free slot only, when any has one; else those not yet over their cap
        (a spare slot the admission queue lent, one per worker); else all (a slot being handed over)."""
        now = time.monotonic()
        serving = [h for h in self.workers.values() if model in h.models]
        free = [h for h in serving if h.inflight < h.max_concurrency]
        spare = [h for h in serving if h.inflight <= h.max_concurrency]
        return [h.view(now) for h in (free or spare or serving)]

    def capacity(self, model: str) -> Capacity:
        """Requests the model's ready workers take at once: the sum of their slots (each agent's setting), and
        one spare slot per worker for the fair queue to lend to a team below its share."""
        now = time.monotonic()
        ready = [h for h in self.workers.values() if model in h.models and h.ready(now)]
        return Capacity(slots=sum(h.max_concurrency for h in ready), spare=len(ready))

    def by_id(self, worker_id: str) -> WorkerHandle:
        for handle in self.workers.values():
            if handle.worker_id == worker_id:
                return handle
        raise KeyError(worker_id)

    def models(self) -> dict[str, pb.ModelInfo]:
        """Every model any known worker serves (ready or not), with the largest known context; merged again only
        when a worker's Info changed (this runs for every request). Read-only for callers."""
        infos = tuple(h.info for h in self.workers.values())
        seen_infos, merged = self._merged
        if len(infos) != len(seen_infos) or any(a is not b for a, b in zip(infos, seen_infos, strict=False)):
            merged = self._merge()
            self._merged = (infos, merged)
        return merged

    def _merge(self) -> dict[str, pb.ModelInfo]:
        found: dict[str, pb.ModelInfo] = {}
        for name, offered in self.offered.items():  # an on-demand model no worker serves: as the catalog says
            if not any(
                handle.info and any(m.name == name for m in handle.info.models) for handle in self.workers.values()
            ):
                found[name] = offered
        for handle in self.workers.values():
            for model in handle.info.models if handle.info else ():
                seen = found.get(model.name)
                if seen is None:
                    found[model.name] = pb.ModelInfo(
                        name=model.name,
                        source=model.source,
                        max_model_len=model.max_model_len,
                        unsupported=model.unsupported,
                        engine=model.engine,
                        routes=model.routes,
                        capabilities=model.capabilities,
                        capabilities_known=model.capabilities_known,
                    )
                    continue
                _merge_capabilities(seen, model)
                seen.max_model_len = max(seen.max_model_len, model.max_model_len)
                # A request may land on any of them: what one engine cannot honour, the model cannot.
                seen.unsupported[:] = sorted(set(seen.unsupported) | set(model.unsupported))
                if model.routes:  # what every one of them serves (an older agent says nothing)
                    both = [r for r in seen.routes if r in model.routes] if seen.routes else list(model.routes)
                    seen.routes[:] = both
                engines = sorted(set(seen.engine.split(", ")) | {model.engine} - {""})
                seen.engine = ", ".join(engines)
        return found

    def state_of(self, model: str) -> str:
        """loaded (a worker is ready), unloaded (an on-demand model no worker serves), else loading."""
        if self.capacity(model).slots:
            return "loaded"
        serving = any(h.info and any(m.name == model for m in h.info.models) for h in self.workers.values())
        return "unloaded" if model in self.offered and not serving else "loading"

    def awaited(self, model: str) -> bool:
        """A model no agent reports, which one may yet: the hosts file names it, or an agent has not told its models
        since this router started (for at most LEARN_S). Asked for, it is unavailable (503), not unknown (404)."""
        if model in self.expected:
            return True
        learning = time.monotonic() - self.started_at < LEARN_S
        return learning and any(h.info is None for h in self.workers.values())

    def ready_count(self) -> int:
        now = time.monotonic()
        return sum(h.ready(now) for h in self.workers.values())

    def find(self, name: str) -> list[WorkerHandle]:
        """The workers a name means: its id (a lab host's name), its address, or its address's host (several
        agents on one machine share that)."""
        exact = [h for h in self.workers.values() if name in (h.worker_id, h.address)]
        return exact or [h for h in self.workers.values() if h.address.rpartition(":")[0] == name]

    async def drain(self, handle: WorkerHandle, draining: bool) -> pb.DrainReply:
        """Ask the agent itself (so a restarted router still knows), and stop choosing it at once."""
        assert handle.stub is not None  # set by start()
        reply: pb.DrainReply = await handle.stub.Drain(pb.DrainRequest(draining=draining), timeout=INFO_DEADLINE_S)
        if handle.sample is not None:
            handle.sample.draining = reply.draining
        return reply

    def attempt(self, handle: WorkerHandle) -> bool:
        """A request goes to the worker; True if it is the breaker's half-open probe."""
        return handle.breaker.on_attempt(time.monotonic())

    def failed(self, handle: WorkerHandle) -> None:
        """A transport failure or an accept deadline missed (not the agent's own verdict, such as a 400)."""
        was = handle.breaker.state(time.monotonic())
        handle.breaker.on_failure(time.monotonic())
        if handle.breaker.state(time.monotonic()) is not was:
            log.warning("worker %s: circuit breaker open (%d failures)", handle.address, handle.breaker.failures)

    def succeeded(self, handle: WorkerHandle) -> None:
        if handle.breaker.opened_at is not None:
            log.info("worker %s: circuit breaker closed", handle.address)
        handle.breaker.on_success()

    async def _follow(self, handle: WorkerHandle) -> None:
        stop = asyncio.Event()
        keeper = asyncio.create_task(_keep_tap(handle, stop), name=f"tap {handle.address}")
        self._closing.add(keeper)  # (held until it ends: the registry's stop waits for it)
        keeper.add_done_callback(self._closing.discard)
        try:
            await self._watch(handle)
        finally:
            stop.set()  # its tap takes no new requests and ends once those on it end (on the old channel)

    async def _watch(self, handle: WorkerHandle) -> None:
        assert handle.stub is not None  # set by start()
        delay = RECONNECT_MIN_S
        while True:
            try:
                handle.info = await handle.stub.Info(pb.InfoRequest(), timeout=INFO_DEADLINE_S)
                info_when_ready = handle.sample is not None and _is_ready(handle.sample)
                stream = handle.stub.Watch(pb.WatchRequest(interval_seconds=self.watch_interval_s))
                async for sample in stream:
                    if not handle.connected:
                        log.info("worker %s connected (%s)", handle.address, handle.worker_id)
                        handle.breaker.on_reconnect()  # what it said before it left is not trusted
                    handle.connected, handle.last_error, delay = True, "", RECONNECT_MIN_S
                    rate = token_rate(handle.sample, sample)
                    handle.tokens_per_s = handle.tokens_per_s if rate is None else rate
                    handle.sample, handle.sample_at = sample, time.monotonic()
                    handle.load = Load.of(sample)
                    ready = _is_ready(sample)
                    if ready and not info_when_ready:
                        # Ask again once the engine is ready: it then knows its context length.
                        handle.info = await handle.stub.Info(pb.InfoRequest(), timeout=INFO_DEADLINE_S)
                        info_when_ready = True
                    elif not ready:
                        info_when_ready = False
            except grpc.aio.AioRpcError as exc:
                _note_failure(handle, exc)
            handle.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)


async def _keep_tap(handle: WorkerHandle, stop: asyncio.Event) -> None:
    """The agent's tap for as long as the router follows the agent on this channel: opened again when it ends
    (a new connection, an agent restarted), on a lifetime of its own (a Watch that fails does not end the
    streams on it). Once `stop` is set it is retired: no new requests, and it ends when those on it end. An
    agent without taps is asked again now and then (it may be upgraded meanwhile)."""
    stub = handle.stub
    assert stub is not None  # set by start()
    delay, said, said_failed = RECONNECT_MIN_S, False, ""
    while not stop.is_set():
        tap = handle.tap = TapClient(stub, handle.address)
        began = time.monotonic()
        running, stopping = asyncio.ensure_future(tap.run()), asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                tap.retire()
                await running
                return
        finally:
            stopping.cancel()
            running.cancel()  # (a no-op once it ended)
            if handle.tap is tap:
                handle.tap = None  # (a channel that replaced this one has a tap of its own)
        if (exc := running.exception()) is not None and repr(exc) != said_failed:
            said_failed = repr(exc)  # once per reason, not at every retry
            log.warning("worker %s: its tap failed: %s", handle.address, said_failed)
        if tap.unsupported:
            if not said:
                log.info("worker %s has no taps (an agent from before them): replies come on each call", handle.address)
            said, delay = True, TAP_ASK_AGAIN_S
        elif time.monotonic() - began > RECONNECT_MAX_S:
            delay = RECONNECT_MIN_S  # it served a while: a new connection, not a refusal
        else:
            delay = min(delay * 2, RECONNECT_MAX_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


def _note_failure(handle: WorkerHandle, exc: grpc.aio.AioRpcError) -> None:
    """Keep why the worker cannot be reached, for its row; log it when the worker is lost or the reason changes
    (once, not at every retry)."""
    reason = failure_reason(exc)
    if handle.pin == pins.REVOKED:
        reason = "certificate revoked (cluster certs revoke): refused until `cluster up` gives the host a new one"
    elif handle.pin and "Hostname Verification" in reason:  # gRPC's words for "not the name asked for"
        reason = f"not the certificate last issued to it (an older or copied key): {reason}"[:REASON_CHARS]
    if handle.connected:
        log.warning("worker %s lost: %s", handle.address, reason)
    elif reason != handle.last_error:
        log.warning("worker %s unreachable: %s", handle.address, reason)
    handle.last_error = reason


def failure_reason(exc: grpc.aio.AioRpcError) -> str:
    """The call's status code and gRPC's details (for a connection that never came up, the handshake's or the
    socket's error), bounded."""
    details = " ".join((exc.details() or "").split())
    text = f"{exc.code().name}: {details}" if details else exc.code().name
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def _is_ready(sample: pb.LoadSample) -> bool:
    return EngineState.from_wire(sample.state) is EngineState.READY
