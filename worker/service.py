"""The agent's gRPC service: Generate (relay), Info (host facts) and Watch (load samples)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psutil

from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.children import Children, LoadRefused
from worker.context import PromptGuard
from worker.group import GroupController
from worker.heartbeat import once, with_heartbeats
from worker.hostinfo import HostFacts
from worker.identity import IdentityError, replace_identity
from worker.relay import EngineError, Tally, settle_stream_options, stream_batches, whole_response
from worker.shared import endpoints, errors, tls
from worker.shared.enginemetrics import LastLoad, RateMeter, TrafficMeter, figures
from worker.shared.launch import MAX_BODY_BYTES
from worker.shared.load import Load as Figures  # (`Load` here is the RPC)
from worker.singleflight import SingleFlight
from worker.supervisor import EngineSupervisor
from worker.tap import Outlet, TapClosed, Taps

log = logging.getLogger(__name__)

ALIVE = pb.GenerateReply(heartbeat=pb.Heartbeat())
BEAT_BOUNDS_S = (0.1, 60.0)


def _beat(request: pb.GenerateRequest) -> float | None:
    """The heartbeat period the router asked for (bounded: a tiny one would be a busy loop); None when it asked
    for none (a router from before heartbeats would take one for the answer)."""
    if not request.HasField("heartbeat_seconds"):
        return None
    return min(max(request.heartbeat_seconds, BEAT_BOUNDS_S[0]), BEAT_BOUNDS_S[1])


def usage_message(usage: dict[str, object]) -> pb.Usage:
    """An engine's usage as the contract counts it, whichever API's names it uses: OpenAI's chat and completions
    (prompt/completion tokens), the Responses API's and Anthropic's (input/output tokens)."""

    def num(*keys: str, within: object = usage) -> int | None:
        for key in keys:
            value = within.get(key) if isinstance(within, dict) else None
            if isinstance(value, int | float):
                return int(value)
        return None

    prompt = num("prompt_tokens", "input_tokens") or 0
    completion = num("completion_tokens", "output_tokens") or 0
    message = pb.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=num("total_tokens") or prompt + completion
    )
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = num("cached_tokens", within=details)
    cached = cached if cached is not None else num("cache_read_input_tokens")  # Anthropic's name
    if cached is not None:
        message.cached_prompt_tokens = cached
    return message


@dataclass(frozen=True)
class ServiceIdentity:
    worker_id: str
    models: tuple[pb.ModelInfo, ...]
    max_concurrency: int
    engine_version: str
    agent_version: str


class WorkerService(pb_grpc.WorkerServicer):
    """Relays requests to one supervised engine. Dependencies are injected; no globals."""

    def __init__(
        self,
        supervisor: EngineSupervisor,
        identity: ServiceIdentity,
        host: HostFacts,
        http: httpx.AsyncClient,
        group: GroupController | None = None,
        guard: PromptGuard | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        tls_dir: Path | None = None,
        children: Children | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.children = children  # on-demand engines as child agents (Load, Unload); None: none here
        self.tls_dir = tls_dir  # our identity's folder: the router renews it (Renew); None: plaintext, loopback
        self.max_body_bytes = max_body_bytes  # the router's limit: a body past it did not come through a router
        self.guard = guard  # for engines that let an over-long prompt through (mlx-lm)
        self.group = group
        self.instance = uuid.uuid4().hex[:12]
        self.identity = identity
        self.host = host
        self.http = http
        self.inflight = 0
        self.streams = 0  # streams in flight: their chunks are the progress the stall watchdog sees
        self.supervisor.inflight = self._watched
        self.draining = False  # cluster drain: no new requests; those in flight finish
        self.rates = RateMeter()
        self.traffic = TrafficMeter()  # load figures for engines without /metrics
        self.last_load = LastLoad()
        self.taps = Taps()  # the routers' shared reply streams
        self.figures = SingleFlight(self._figures)  # one engine scrape per interval, whoever watches
        self._context_lengths: dict[str, int] = {}  # learned from the engine's /v1/models once ready

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateReply]:
        if not await _router_only(context):
            return
        await context.send_initial_metadata(())  # accepted: the router's accept deadline tells a hung host apart
        admitted = await self._admit(request, context)
        if admitted is None:
            return
        method, url, body, tally, streaming = admitted
        started, beat = time.monotonic(), _beat(request)
        if self._watched() == 0:
            self.supervisor.note_token()  # busy from now: an idle engine is not stalled
        self.inflight += 1  # no await since _admit's draining check: a drain that read inflight 0 saw every request
        outlet = Outlet(self.taps.get(request.tap_id) if streaming else None, request.tap_key)
        try:
            replies = self._stream(url, body, tally, beat) if streaming else self._whole(method, url, body, tally, beat)
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    if (here := await outlet.send(reply)) is not None:
                        yield here
            final = pb.GenerateReply(final=self._final(tally, started, streaming))
            if (here := await outlet.send(final)) is not None:
                yield here
            await outlet.end()
        except EngineError as exc:
            await _end_quietly(outlet)
            config, route = self.supervisor.config, endpoints.PATHS[request.endpoint]
            if exc.status in (404, 405) and route not in endpoints.served(config.kind, config.task):  # no such route
                model = self.identity.models[0].name
                message = f"The model `{model}` does not serve {route} (engine {config.kind})."
                await _abort(context, 404, message, "not_found_error")
                return
            kind = "invalid_request_error" if exc.status < 500 else "engine_error"
            await _abort(context, exc.status, exc.body, kind)
        except httpx.HTTPError as exc:
            await _end_quietly(outlet)
            log.warning("request %s: engine connection failed: %r", request.request_id, exc)
            # The exception's text is the operator's (logged above); the client gets a stable code and message.
            message = "The engine stopped answering before the reply was complete; try again."
            await _abort(
                context,
                503,
                errors.openai_error(message, "service_unavailable", 503, "engine_unavailable"),
                "service_unavailable",
            )
        except TapClosed:  # the router's connection went: nobody reads this request any more
            await _abort(context, 503, "the router's tap closed", "service_unavailable")
        finally:
            outlet.close()
            self.inflight -= 1

    async def Tap(self, request: pb.TapRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.TapBatch]:
        if not await _router_only(context) or not request.tap_id:
            return
        tap = self.taps.open(request.tap_id, request.window_bytes)
        try:
            async for batch in tap.batches():
                yield batch
        finally:
            self.taps.close(tap)

    async def Credit(self, request: pb.CreditRequest, context: grpc.aio.ServicerContext) -> pb.CreditReply:
        if await _router_only(context) and (tap := self.taps.get(request.tap_id)) is not None:
            tap.credit(request.key, request.bytes)
        return pb.CreditReply()

    async def _admit(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> tuple[str, str, bytes, Tally, bool] | None:
        """The HTTP method and engine URL, the body to send, a tally and whether it streams; or None, the call
        aborted."""
        if request.endpoint not in endpoints.PATHS:
            await _abort(context, 400, "unknown endpoint", "invalid_request_error")
            return None
        if len(request.body) > self.max_body_bytes:
            detail = f"Request body exceeds the limit of {self.max_body_bytes} bytes."
            await _abort(context, 413, detail, "invalid_request_error")
            return None
        if not self.supervisor.ready:
            detail = f"engine is {self.supervisor.state.value}: {self.supervisor.detail}"
            await _abort(context, 503, detail, "service_unavailable")
            return None
        try:
            payload = json.loads(request.body)
            method, path = endpoints.engine_request(request.endpoint, payload)
        except (ValueError, AttributeError, KeyError):
            await _abort(
                context, 400, "request body is not a JSON object of the endpoint's shape", "invalid_request_error"
            )
            return None
        if self.guard is not None and (too_long := await asyncio.to_thread(self.guard.refusal, payload)):
            await _abort(context, 400, too_long, "invalid_request_error")
            return None
        streaming = request.stream if request.HasField("stream") else bool(payload.get("stream"))  # an older router
        tally, body = Tally(), request.body
        if streaming and request.endpoint in endpoints.OPENAI_STREAMS:
            tally.running = self.supervisor.adapter.running_usage
            tally.strip_running, tally.strip_final = settle_stream_options(payload, tally.running)
            body = json.dumps(payload).encode()
        if self.draining:  # the router stops sending once it hears; a request already on its way goes elsewhere
            await _abort(context, 503, "this worker is draining", "service_unavailable")
            return None
        return method, self.supervisor.url + path, body, tally, streaming

    async def _stream(
        self, url: str, body: bytes, tally: Tally, beat: float | None
    ) -> AsyncGenerator[pb.GenerateReply, None]:
        batches = stream_batches(self.http, url, body, tally)
        self.streams += 1
        try:
            async with contextlib.aclosing(with_heartbeats(batches, beat)) as beating:
                async for batch in beating:
                    if batch is None:
                        yield ALIVE
                        continue
                    self.supervisor.note_token()
                    tally.first_at = tally.first_at or time.monotonic()
                    # Only a running count bills a cut stream; Anthropic's message_start has the prompt's alone.
                    running = usage_message(tally.usage) if tally.running and tally.usage else None
                    named = any(name for name, _ in batch)
                    chunks = pb.Chunks(
                        items=[data for _, data in batch],
                        usage=running,
                        events=[name for name, _ in batch] if named else (),
                    )
                    yield pb.GenerateReply(chunks=chunks)
        finally:
            self.streams -= 1
            await batches.aclose()  # on cancel, close the engine stream now (not at GC): it aborts

    async def _whole(
        self, method: str, url: str, body: bytes, tally: Tally, beat: float | None
    ) -> AsyncGenerator[pb.GenerateReply, None]:
        # A retrieval (GET) generates nothing: the stored answer's usage was billed when it was made.
        answer = once(whole_response(self.http, method, url, body, tally if method == "POST" else Tally()))
        async with contextlib.aclosing(with_heartbeats(answer, beat)) as beating:
            async for whole in beating:
                yield ALIVE if whole is None else pb.GenerateReply(response=whole)

    def _final(self, tally: Tally, started: float, streaming: bool) -> pb.Final:
        if tally.tokens_seen:
            self.supervisor.note_token()
        final = pb.Final(
            usage=usage_message(tally.usage),
            finish_reason=tally.finish_reason,
            engine_seconds=time.monotonic() - started,
        )
        if streaming and tally.first_at:  # a whole answer has no first token to time
            self.traffic.observe(
                final.usage.prompt_tokens, final.usage.completion_tokens, tally.first_at - started, final.engine_seconds
            )
        return final

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoReply:
        return pb.InfoReply(
            worker_id=self.identity.worker_id,
            hostname=self.host.hostname,
            os=self.host.os,
            chip=self.host.chip,
            memory_bytes=self.host.memory_bytes,
            engine=self.supervisor.config.kind,
            engine_version=self.identity.engine_version,
            models=await self._models(),
            max_concurrency=self.identity.max_concurrency,
            engine_url=self.supervisor.url,
            agent_version=self.identity.agent_version,
            group=self._group_info(),
            settles_stream_options=True,
            usable_memory_bytes=self.children.usable_bytes if self.children else self.host.usable_memory_bytes,
            children=[pb.Child(model=c.model, port=c.port) for c in self.children.running.values()]
            if self.children
            else [],
        )

    def _group_info(self) -> pb.GroupInfo | None:
        if self.group is None:
            return None
        role = self.group.role
        return pb.GroupInfo(
            name=role.name, rank=role.rank, size=role.size, mode=role.mode, backend=role.backend, peers=list(role.peers)
        )

    async def _models(self) -> list[pb.ModelInfo]:
        """Configured models, with the context length the engine reports where none was configured."""
        if self.supervisor.ready and any(m.max_model_len == 0 for m in self.identity.models):
            try:
                listing = (await self.http.get(self.supervisor.url + "/v1/models", timeout=5.0)).json()
                for card in listing.get("data") or ():
                    if isinstance(card.get("max_model_len"), int):
                        self._context_lengths[card["id"]] = card["max_model_len"]
            except (httpx.HTTPError, ValueError, AttributeError):
                pass  # unknown stays 0; the router then applies its ceiling
        models = []
        adapter = self.supervisor.adapter
        capabilities = self.supervisor.capabilities
        for model in self.identity.models:
            known = model.max_model_len or self._context_lengths.get(model.name, 0)
            models.append(
                pb.ModelInfo(
                    name=model.name,
                    source=model.source,
                    max_model_len=known,
                    unsupported=adapter.unsupported,
                    engine=adapter.name,
                    routes=endpoints.served(adapter.name, self.supervisor.config.task),
                    capabilities=capabilities or (),
                    capabilities_known=capabilities is not None,
                )
            )
        return models

    def _watched(self) -> int:
        """Requests the stall watchdog follows: streams (each token is progress), and whole answers too where
        the engine counts the tokens it generates (without that count a long answer would look hung)."""
        return self.inflight if self.supervisor.adapter.metrics_path else self.streams

    async def Drain(self, request: pb.DrainRequest, context: grpc.aio.ServicerContext) -> pb.DrainReply:
        if not await _router_only(context):
            return pb.DrainReply()
        if request.draining != self.draining:
            log.info("%s: %s", "draining" if request.draining else "taking requests again", self.identity.worker_id)
        self.draining = request.draining
        return pb.DrainReply(draining=self.draining, inflight=self.inflight)

    async def Renew(self, request: pb.RenewRequest, context: grpc.aio.ServicerContext) -> pb.RenewReply:
        if not await _router_only(context):
            return pb.RenewReply()
        if self.tls_dir is None or tls.caller_name(context.auth_context()) is None:
            await _abort(
                context, 400, "this agent speaks plaintext: it has no identity to renew", "invalid_request_error"
            )
            return pb.RenewReply()
        try:
            certificate = replace_identity(self.tls_dir, request.identity, dt.datetime.now(dt.UTC))
        except (IdentityError, tls.TlsError, OSError) as exc:
            log.warning("TLS identity from the router refused: %s", exc)
            await _abort(context, 400, f"identity refused: {exc}", "invalid_request_error")
            return pb.RenewReply()
        log.info(
            "TLS identity renewed by the router: valid until %s", f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
        )
        return pb.RenewReply()

    async def Load(self, request: pb.LoadRequest, context: grpc.aio.ServicerContext) -> pb.LoadReply:
        if not await _router_only(context):
            return pb.LoadReply()
        if self.children is None:
            await _abort(context, 400, "this agent runs no on-demand engines", "invalid_request_error")
            return pb.LoadReply()
        try:
            port = await self.children.load(request.model, list(request.argv), request.need_bytes)
        except LoadRefused as exc:
            log.warning("load of %s refused: %s", request.model, exc)
            await _abort(context, 503, str(exc), "insufficient_memory")
            return pb.LoadReply()
        log.info("on-demand engine for %s: agent on port %d", request.model, port)
        return pb.LoadReply(port=port)

    async def Unload(self, request: pb.UnloadRequest, context: grpc.aio.ServicerContext) -> pb.UnloadReply:
        if not await _router_only(context):
            return pb.UnloadReply()
        was = await self.children.unload(request.model) if self.children else False
        if was:
            log.info("on-demand engine for %s unloaded", request.model)
        return pb.UnloadReply(was_loaded=was)

    async def Watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LoadSample]:
        interval = request.interval_seconds if request.HasField("interval_seconds") else 1.0
        interval = min(max(interval, 0.05), 60.0)
        while True:
            # Another watcher's scrape if that recent; a slow one (a busy engine) delays the sample only so long.
            yield await self.sample(max_age_s=interval / 2, wait_s=interval / 2)
            await asyncio.sleep(interval)

    async def sample(self, max_age_s: float = 0.0, wait_s: float | None = None) -> pb.LoadSample:
        """The agent's state now, and the engine's load figures measured at most `max_age_s` ago (or the last
        ones, when measuring takes longer than `wait_s`)."""
        sup = self.supervisor
        sample = pb.LoadSample(
            timestamp=time.time(),
            state=sup.state.to_wire(),
            agent_inflight=self.inflight,
            draining=self.draining,
            engine_restarts=sup.restarts,
            state_detail="" if sup.ready else sup.detail,
            agent_instance=self.instance,
            engine_crashes=sup.crashes,
            group_epoch=self.group.run_epoch if self.group else "",
            memory_available_bytes=psutil.virtual_memory().available,  # macOS and Linux alike; a syscall
            health_failures=sup.health_failures if sup.ready else 0,
        )
        (await self.figures.get(max_age_s, wait_s)).into(sample)
        return sample

    async def _figures(self) -> Figures:
        sup = self.supervisor
        if sup.adapter.metrics_path is None:
            load = self.traffic.load(running=self.inflight) if sup.ready else None  # what the agent saw pass
        else:
            load = self.last_load.through(await sup.stats(), sup.restarts) if sup.ready else None
        if load is not None:
            self.rates.update(load, epoch=sup.restarts)
        return figures(load, self.rates)


async def _end_quietly(outlet: Outlet) -> None:
    """The end part before an error status: a tap already closed has nobody to tell."""
    with contextlib.suppress(TapClosed):
        await outlet.end()


async def _router_only(context: grpc.aio.ServicerContext) -> bool:
    """Generate and Drain are the router's: another certificate from the cluster CA (a shard-group peer, which
    only watches, or an agent set up by hand) is refused. Plaintext is loopback only (the agent's config)."""
    caller = tls.caller_name(context.auth_context())
    if caller is None or caller == tls.ROUTER_NAME:
        return True
    await _abort(context, 403, f"only the router may call this (caller: {caller})", "permission_error")
    return False


async def _abort(context: grpc.aio.ServicerContext, status: int, message: str | bytes, kind: str) -> None:
    """End the call with a gRPC status whose trailers carry the OpenAI error body and HTTP status."""
    body = message if isinstance(message, bytes) else errors.openai_error(message, kind, status)
    text = message.decode(errors="replace")[:500] if isinstance(message, bytes) else message
    context.set_trailing_metadata(errors.trailers(status, body))
    context.set_code(errors.grpc_code(status))
    context.set_details(text)
