"""Forwarding one admitted request: pick a worker, open Generate, retry elsewhere on a failure before the first
byte (a transport error, or a worker that does not accept the call within the accept deadline: agents accept at
once, so a hung or sleeping host is passed over in seconds, however long the prompt takes), then relay the
engine's reply unchanged (SSE chunks or the whole body) with usage and error handling.

A client that goes away cancels the gRPC call; the agent then closes its engine stream and the engine aborts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from fastapi.responses import Response

from cluster.router.connections import BodyWriter
from cluster.router.errors import ApiError, Dialect, from_grpc
from cluster.router.intake import Incoming
from cluster.router.metrics import RouterMetrics
from cluster.router.passthrough import Outlet, PassThrough
from cluster.router.registry import Registry, WorkerHandle
from cluster.router.tap import CREDIT_EVERY, Inbox, TapBroken, Unrelayable
from cluster.routing.choose import Decision, RequestView, RoutingState, choose
from cluster.routing.sessions import SessionPins
from proto import orchard_pb2 as pb
from worker.shared import endpoints, errors
from worker.shared.launch import RouterConfig


@dataclass
class Started:
    """A Generate call that produced its first reply on `handle`."""

    handle: WorkerHandle
    call: Any  # grpc.aio.UnaryStreamCall
    reads: Reads  # its messages, under the gap deadline
    first: pb.GenerateReply
    at: float = field(default_factory=time.monotonic)  # when the first reply came
    drops_usage: bool = False  # an older agent's stream: the router drops the usage chunk nobody asked for

    def stop(self) -> None:
        """End the call (a no-op when it ended) and what reads it."""
        self.call.cancel()
        self.reads.close()


@dataclass(frozen=True)
class Home:
    """Where a stored response is, for whom: the Responses API continues it on the worker that stored it, and
    only for the team whose key made it."""

    worker: str
    model: str
    owner: str


@dataclass(frozen=True)
class Ended:
    """How a forwarded request ended, for usage accounting: HTTP status and the engine's token counts."""

    status: int
    worker: str
    usage: pb.Usage
    counted: bool  # False: the engine's count never came (tokens counted by the relay, the prompt estimated)
    itl_s: float | None = None  # a finished stream's mean gap between tokens after the first


OnEnd = Callable[[Ended], None]


RESPONSE_HOME_TTL_S = 7 * 24 * 3600.0  # a week from its making (the engine keeps it until it restarts)
MAX_RESPONSE_HOMES = 100_000
HEARTBEATS_PER_GAP = 4  # an agent's heartbeat may come late three times over before the gap deadline passes
CLIENT_CLOSED = 499  # the client left mid-stream (nginx's code; no response went out with it)
# Not DEADLINE_EXCEEDED: the request's one deadline is spent. CANCELLED here is the agent's (shutting down):
# our own cancel arrives as asyncio's CancelledError.
_WORTH_ANOTHER_WORKER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def _transport_failure(exc: grpc.aio.AioRpcError) -> bool:
    """The worker or the network failed — not the agent's verdict (a 400), nor the request's own deadline."""
    if exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return False
    return errors.http_status(exc.trailing_metadata()) is None


class _Silent(Exception):
    """A worker sent nothing within a deadline (accept, or the gap between messages); the message says which."""

    def error(self) -> ApiError:
        return ApiError(504, str(self), code="timeout")


class _TapCut(_Silent):
    """A request's tap broke before its end part came: the rest of its reply is lost (its agent or the
    connection went)."""

    def error(self) -> ApiError:
        return ApiError(
            503, "The worker serving this request became unavailable; try again.", code="worker_unavailable"
        )


class _Unrelayed(_Silent):
    """A part of the reply could not be relayed (the router's log says why): the stream ends with an error."""

    def error(self) -> ApiError:
        return ApiError(502, "The worker's reply could not be relayed; try again.", code="bad_reply")


class _NextWorker(Exception):
    """This worker failed before the first byte in a way another may not (down, hung, shutting down)."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


class Reads:
    """One call's messages under the gap deadline: a read that waits `gap_s` for anything at all (agents
    heartbeat four times per gap) ends the call as hung, _Silent: its host hangs or is cut off, however long the
    engine itself may take. One timer per gap, not one per message (a timeout around each read was ~8% of the
    router's CPU per streamed token): a read notes when it began waiting, and the timer, when due, looks.

    With the agent's tap (`tap`), the messages after the one marked `rest_on_tap` come from the request's inbox
    there, up to its end part; then the call's own status says how it ended."""

    def __init__(self, call: Any, worker: str, gap_s: float, inbox: Inbox | None = None) -> None:
        self.call, self.worker, self.gap_s, self.inbox = call, worker, gap_s, inbox
        self.loop = asyncio.get_running_loop()
        self.waiting_since: float | None = None
        self.expired = False
        self.tapped = False  # the agent said the rest comes on the tap
        self.taken = 0  # bytes of replies taken from the tap (the relay wrote them before it read again)
        self.closed = False
        self.timer = self.loop.call_later(gap_s, self._look)

    def _silent(self) -> _Silent:
        return _Silent(f"Worker {self.worker} stopped answering (nothing for {self.gap_s:g} s).")

    def _look(self) -> None:
        now, since = self.loop.time(), self.waiting_since
        if since is not None and now - since >= self.gap_s:
            self.expired = True
            self.call.cancel()  # the waiting read raises CancelledError, told apart by `expired`
            if self.inbox is not None:
                self.inbox.fail(self._silent())
            return
        self.timer = self.loop.call_at((now if since is None else since) + self.gap_s, self._look)

    async def read(self) -> Any:
        """The call's next message (a heartbeat too) or EOF."""
        self.waiting_since = self.loop.time()
        try:
            if self.tapped:
                return await self._from_tap()
            reply = await self.call.read()
            if reply is not grpc.aio.EOF and reply.rest_on_tap and self.inbox is not None:
                self.tapped = True
            return reply
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.expired and not (task and task.cancelling()):  # our cancel, not the request's
                raise self._silent() from None
            raise
        finally:
            self.waiting_since = None

    async def _from_tap(self) -> Any:
        assert self.inbox is not None  # tapped only with an inbox
        self._settle()  # what it took is written
        try:
            part, size = await self.inbox.get()
        except TapBroken:
            await self.call.read()  # the agent's error status, if it sent one (one whose tap closed aborts)
            raise _TapCut(f"Worker {self.worker}'s tap broke before the reply's end.") from None
        except Unrelayable:
            raise _Unrelayed(f"Worker {self.worker}'s reply could not be relayed.") from None
        if not part.end:
            self.taken += size
            return part.reply
        end = await self.call.read()  # EOF when it succeeded; raises the agent's error status
        if end is not grpc.aio.EOF:
            raise _TapCut(f"Worker {self.worker} replied on its call after its tap's end.")
        return end

    def _settle(self) -> None:
        """Credit the agent what reached the client, by halves of the window: whenever the relay waits, less than
        half is owed, so the agent always has room for the reply it waits for."""
        if self.taken >= CREDIT_EVERY:
            assert self.inbox is not None  # tapped only with an inbox
            self.inbox.credit(self.taken)
            self.taken = 0

    def pass_through(self, frames: Callable[[pb.Chunks], bytes], writer: BodyWriter) -> None:
        """From now on, while the relay waits for the next reply with nothing queued, chunk replies the tap brings
        go straight to the client (passthrough.py) without waking the relay."""
        if self.inbox is not None:
            self.inbox.sink = PassThrough(frames, writer, self._heard)

    def _heard(self, size: int) -> None:
        """A reply of `size` bytes went straight to the client: the worker spoke, and the bytes are the agent's
        again."""
        self.waiting_since = self.loop.time()  # the gap starts anew
        self.taken += size
        self._settle()

    async def reply(self) -> Any:
        """The call's next reply other than a heartbeat (or EOF)."""
        while True:
            reply = await self.read()
            if reply is grpc.aio.EOF or not reply.HasField("heartbeat"):
                return reply

    def call_done(self) -> None:
        """The call ended; a tapped request's last parts may still be on their way (another stream), unless
        the router itself cancelled it (nobody reads on)."""
        if not self.tapped or self.call.cancelled():
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.timer.cancel()
            if self.inbox is not None:
                self.inbox.close()


class Forwarder:
    """Owns the routing state; the registry, metrics and config are injected."""

    def __init__(self, registry: Registry, config: RouterConfig, metrics: RouterMetrics) -> None:
        self.registry, self.config, self.metrics = registry, config, metrics
        self.routing = RoutingState()
        self.policies = dict(config.model_policies)
        # Response id → the worker that stored it (the Responses API continues a response where it is kept).
        self.homes: SessionPins[Home] = SessionPins(ttl_s=RESPONSE_HOME_TTL_S, max_sessions=MAX_RESPONSE_HOMES)

    def decide(self, request: RequestView, tried: frozenset[str]) -> Decision | None:
        """The policy's choice among ready workers not yet tried; recorded in the routing state."""
        now = time.monotonic()
        for handle in self.registry.workers.values():
            if not handle.connected:  # a worker that left (or restarts) has lost its cache
                self.routing.prefixes.forget(handle.worker_id)
        policy = self.policies.get(request.model, self.config.policy)
        decision = choose(policy, request, self.registry.views(request.model), self.routing, now, tried)
        if decision is not None:
            self.routing.turn += 1
            self.routing.prefixes.record(decision.worker_id, request.block_hashes)
            if request.session:
                self.routing.sessions.pin(request.session, decision.worker_id, now)
            self.metrics.decisions.labels(decision.reason).inc()
        return decision

    async def start(self, incoming: Incoming, timeout_s: float) -> Started:
        """Pick a worker and read its first reply. Before any byte reached the client, a worker that fails or
        falls silent is passed over for another (--max-attempts in all, never the same one twice), all within
        the request's one deadline."""
        tried: set[str] = set()
        if incoming.home is not None:  # only the worker holding the response can continue it
            tried = {handle.worker_id for handle in self.registry.workers.values()} - {incoming.home}
        last_error: ApiError | None = None
        generate = incoming.generate_request()
        generate.heartbeat_seconds = self.config.gap_timeout_s / HEARTBEATS_PER_GAP
        deadline = time.monotonic() + timeout_s
        for _ in range(self.config.max_attempts):
            decision = self.decide(incoming.view, frozenset(tried))
            if decision is None:
                break
            handle = self.registry.by_id(decision.worker_id)
            tried.add(decision.worker_id)
            if handle.stub is None:
                continue
            if last_error is not None:
                self.metrics.retries.labels(incoming.model).inc()
            older = _settled_here(handle, incoming)
            try:
                started = await self._attempt(handle, older or generate, deadline)
                started.drops_usage = older is not None
            except _NextWorker as exc:
                last_error = exc.error
            else:
                if incoming.endpoint == pb.ENDPOINT_RESPONSES and (stored := response_id(started.first)):
                    home = Home(started.handle.worker_id, incoming.model, incoming.owner)
                    self.homes.pin(stored, home, time.monotonic())
                return started
        if last_error is not None:
            raise last_error
        if incoming.home is not None:
            raise ApiError(
                503,
                f"The response this request continues is stored on worker {incoming.home}, which "
                "is not serving now (down, draining or gone); retry when it is back, or start anew.",
                code="response_unavailable",
            )
        raise ApiError(
            503, f"No ready worker serves `{incoming.model}` right now; try again shortly.", code="no_worker"
        )

    async def _attempt(self, handle: WorkerHandle, generate: pb.GenerateRequest, deadline: float) -> Started:
        """One worker's first reply. Raises _NextWorker when another worker may do, ApiError when not."""
        assert handle.stub is not None  # the caller skips workers not connected yet
        handle.inflight += 1
        handle.last_used = time.monotonic()
        probe = self.registry.attempt(handle)
        inbox = handle.tap.join() if handle.tap is not None and generate.stream else None
        # Set anew for every attempt (the message is sent, serialized, before the next one changes it).
        generate.tap_id, generate.tap_key = (inbox.tap_id, inbox.key) if inbox is not None else ("", "")
        call = handle.stub.Generate(generate, timeout=max(deadline - time.monotonic(), 0.001))
        worker = handle.worker_id
        reads = Reads(call, worker, self.config.gap_timeout_s, inbox)
        call.add_done_callback(lambda _call, h=handle: _ended(h, reads))  # however the RPC ends
        try:
            await self._accepted(call, worker)
            first = await reads.read()  # any message, a heartbeat too
            self.registry.succeeded(handle)  # it accepted and spoke: alive, however long the prompt takes
            if first is not grpc.aio.EOF and first.HasField("heartbeat"):
                first = await reads.reply()
        except _Silent as exc:
            call.cancel()
            reads.close()
            self.registry.failed(handle)
            raise _NextWorker(exc.error()) from None
        except grpc.aio.AioRpcError as exc:
            reads.close()
            if _transport_failure(exc):
                self.registry.failed(handle)
            elif errors.http_status(exc.trailing_metadata()) is not None:
                self.registry.succeeded(handle)  # the agent answered (a 400, "draining"): it is alive
            elif probe:
                handle.breaker.on_abandoned()  # the request's own deadline: no verdict on the worker
            if exc.code() in _WORTH_ANOTHER_WORKER:
                raise _NextWorker(from_grpc(exc)) from None
            raise from_grpc(exc) from exc
        except BaseException:  # cancelled (the client left): no verdict on the worker; end the call now
            call.cancel()
            reads.close()
            if probe:
                handle.breaker.on_abandoned()
            raise
        if first is grpc.aio.EOF:
            reads.close()
            raise ApiError(502, "the worker ended the response without any data")
        return Started(handle, call, reads, first)

    async def _accepted(self, call: Any, worker: str) -> None:
        try:
            await asyncio.wait_for(call.initial_metadata(), self.config.accept_timeout_s)
        except TimeoutError:
            raise _Silent(
                f"Worker {worker} did not accept the request within {self.config.accept_timeout_s:g} s."
            ) from None

    async def whole(self, started: Started, incoming: Incoming, headers: dict[str, str], on_end: OnEnd) -> Response:
        """A non-streaming reply: the engine's body, with usage filled in if the engine left it out."""
        worker = started.handle.worker_id
        try:
            final = await started.reads.reply()
        except _Silent:  # the answer is here; only its token count is missing
            started.call.cancel()
            self.registry.failed(started.handle)
            final = grpc.aio.EOF
        except grpc.aio.AioRpcError as exc:
            err = from_grpc(exc)
            on_end(Ended(err.status, worker, pb.Usage(), counted=True))
            return err.response(headers, incoming.dialect)
        finally:
            started.reads.close()
            started.handle.served += 1
        body, usage = started.first.response, pb.Usage()
        if final is not grpc.aio.EOF and final.HasField("final"):
            usage = final.final.usage
            if incoming.endpoint in endpoints.OPENAI_STREAMS:
                body = fill_usage(body, usage)
        on_end(Ended(200, worker, usage, counted=True))
        return Response(body, media_type="application/json", headers=headers)

    async def relay(
        self, started: Started, incoming: Incoming, on_end: OnEnd, outlet: Outlet | None = None
    ) -> AsyncIterator[bytes]:
        """SSE frames for every chunk; a failure after the first byte ends with an error event, never a cut. With an
        `outlet` that has a writer, chunks the tap brings while it waits go straight to the client."""
        status, call, ended = 200, started.call, False
        openai = incoming.endpoint in endpoints.OPENAI_STREAMS  # data-only frames, [DONE], a usage chunk
        tally = _Tally(openai and incoming.wants_usage, started.drops_usage)
        try:
            reply = started.first
            while reply is not grpc.aio.EOF:
                if reply.HasField("chunks"):
                    written = tally.frames(reply.chunks)
                    if written:  # one write for everything that arrived together
                        yield written
                elif reply.HasField("final"):
                    tally.usage, tally.counted = reply.final.usage, True
                if outlet is not None and outlet.writer is not None and started.reads.tapped:
                    started.reads.pass_through(tally.frames, outlet.writer)
                    outlet = None  # once
                reply = await started.reads.reply()
            ended = True
            if openai:
                yield DONE
        except (grpc.aio.AioRpcError, _Silent) as exc:
            if isinstance(exc, _Silent) and not isinstance(exc, _Unrelayed):  # the worker went quiet
                self.registry.failed(started.handle)
            err = from_grpc(exc) if isinstance(exc, grpc.aio.AioRpcError) else exc.error()
            status, ended = err.status, True
            yield error_event(err, incoming)
        finally:
            call.cancel()  # no-op when finished; aborts the engine request when the client left
            started.reads.close()
            started.handle.served += 1
            if started.reads.tapped:
                self.metrics.tapped.inc()
            status = status if ended else CLIENT_CLOSED
            usage = tally.usage
            if not tally.counted:  # cut short, no running count (mlx-lm): one token per streamed chunk
                usage = pb.Usage(completion_tokens=tally.chunks, total_tokens=tally.chunks)
            tokens = usage.completion_tokens // incoming.choices
            itl = (time.monotonic() - started.at) / (tokens - 1) if status == 200 and tokens > 1 else None
            on_end(Ended(status, started.handle.worker_id, usage, tally.counted, itl))


class _Tally:
    """What a stream relayed so far: the engine's running count, and the items of text (what a cut stream
    without one is billed)."""

    def __init__(self, usage_chunk: bool, drops_usage: bool) -> None:
        self.usage_chunk, self.drops_usage = usage_chunk, drops_usage
        self.usage, self.counted, self.chunks = pb.Usage(), False, 0

    def frames(self, batch: pb.Chunks) -> bytes:
        """The batch's SSE bytes, counted."""
        if batch.HasField("usage"):  # the engine's running count: what a cut stream costs
            self.usage, self.counted = batch.usage, True
        written, tokens = frames(batch, self.usage_chunk, self.drops_usage)
        self.chunks += tokens
        return written


DONE = b"data: [DONE]\n\n"


def frames(chunks: pb.Chunks, usage_chunk: bool, drop_usage: bool = False) -> tuple[bytes, int]:
    """One batch as SSE bytes, and how many of its items carry generated text (what a cut stream without a
    running count is billed). Everything goes on as it came (the agent took out what the client did not ask
    for); `usage_chunk`: the client asked for OpenAI's usage-only chunk, which is not text; `drop_usage`: an
    older agent's stream, whose usage chunk the client did not ask for."""
    if chunks.events:
        named = zip(chunks.events, chunks.items, strict=True)
        deltas = sum(1 for name in chunks.events if name.endswith("_delta") or name.endswith(".delta"))
        return b"".join(_named(name, item) for name, item in named), deltas
    items = chunks.items
    if len(items) == 1 and not (usage_chunk or drop_usage):  # the most common batch: one chunk
        return b"data: " + items[0] + b"\n\n", 1
    if usage_chunk or drop_usage:
        text = [c for c in items if not is_usage_only(c)]
        return b"".join(b"data: " + c + b"\n\n" for c in (text if drop_usage else items)), len(text)
    return b"".join(b"data: " + c + b"\n\n" for c in items), len(items)


def _settled_here(handle: WorkerHandle, incoming: Incoming) -> pb.GenerateRequest | None:
    """For an agent from before it settled stream options (an upgrade restarts agents in waves): the request
    as such an agent expects it, asking for usage on the stream; None for every other case."""
    if handle.info is None or handle.info.settles_stream_options or not incoming.stream:
        return None
    if incoming.endpoint not in endpoints.OPENAI_STREAMS or incoming.wants_usage:
        return None
    body = json.loads(incoming.body)
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    older = incoming.generate_request()
    older.body = json.dumps(body).encode()
    return older


def _named(name: str, item: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + item + b"\n\n" if name else b"data: " + item + b"\n\n"


def error_event(err: ApiError, incoming: Incoming) -> bytes:
    """How a stream that fails after its first byte ends, in its API's framing: OpenAI's chat and completions
    send the error as data and [DONE]; Anthropic's and the Responses API's streams send an `error` event."""
    if incoming.endpoint in endpoints.OPENAI_STREAMS:
        return b"data: " + json.dumps(err.body(incoming.dialect)).encode() + b"\n\n" + DONE
    if incoming.dialect is Dialect.ANTHROPIC:
        return _named("error", json.dumps(err.body(Dialect.ANTHROPIC)).encode())
    error = err.body()["error"]
    return _named(
        "error",
        json.dumps(
            {
                "type": "error",
                "code": error["code"] or error["type"],
                "message": error["message"],
                "param": error["param"],
            }
        ).encode(),
    )


def response_id(first: pb.GenerateReply) -> str | None:
    """The id of a response the Responses API stored: in the whole body, or in the stream's first event
    (`response.created`)."""
    payload = first.response if first.HasField("response") else (first.chunks.items or [b""])[0]
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if isinstance(body, dict):
        body = body.get("response", body)
    if not isinstance(body, dict) or body.get("store", True) is False:
        return None
    return body["id"] if isinstance(body.get("id"), str) else None


def _ended(handle: WorkerHandle, reads: Reads) -> None:
    reads.call_done()
    handle.inflight -= 1
    handle.last_used = time.monotonic()  # what keep_alive and eviction count from


def is_usage_only(chunk: bytes) -> bool:
    if b'"usage"' not in chunk:
        return False
    try:
        payload = json.loads(chunk)
    except ValueError:
        return False
    return not payload.get("choices") and payload.get("usage") is not None


def fill_usage(body: bytes, usage: pb.Usage) -> bytes:
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
