"""`orchard-worker`: the worker agent. Supervises one engine and serves the Worker gRPC service.

    orchard-worker --listen 127.0.0.1:50051 --engine vllm --model ~/.cache/orchard/models/smollm2-135m-instruct \
        --served-name smollm2-135m-instruct
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.children import Children
from worker.context import PromptGuard, context_of
from worker.engines import adapter_for
from worker.engines.base import EngineConfig
from worker.group import GroupController
from worker.hostinfo import read_host_facts
from worker.service import ServiceIdentity, WorkerService
from worker.shared import build, openfiles, procs, tls
from worker.shared.download import hub_fetch
from worker.shared.launch import ENVELOPE_BYTES, AgentConfig, LaunchConfigError, usage
from worker.shared.models import BUNDLED_NAME, is_bundled, prepare_bundled
from worker.shared.states import EngineState
from worker.shared.store.folder import ModelFolder
from worker.supervisor import EngineSupervisor, SupervisorPolicy

SERVICE_NAME = "orchard.v1.Worker"
DEFAULT_USABLE = 0.75  # of a host's memory its engines may hold where it reports no working set (placement's too)
MAX_SHARE = 0.92  # vllm-metal's own "auto": no engine claims more of the working set
log = logging.getLogger("orchard.worker")


def engine_config(config: AgentConfig) -> EngineConfig:
    """What the supervisor launches, from the agent's configuration."""
    return EngineConfig(
        group=config.group,
        state_dir=str(config.log_path.parent / "state"),
        kind=config.engine,
        model=config.model,
        served_name=config.served_name,
        extra_args=config.engine_args,
        max_model_len=config.max_model_len,
        kv_cache_gib=config.kv_cache_gib,
        python=config.engine_python,
        sim_options=config.sim_options,
        max_concurrency=config.max_concurrency,
        task=config.task,
        tool_parser=config.tool_parser,
        reasoning_parser=config.reasoning_parser,
    )


def bundled_defaults(config: AgentConfig, model_path: str) -> EngineConfig:
    """The bundled name becomes its prepared folder. On vLLM it runs in fp32 unless told otherwise: its
    weights are fp32 (dequantized Q4_1), and in bf16 this small, quantization-worn model meets greedy
    near-ties that flip answers (measured: "L" and "The" both at logprob -1.93 after "What is the capital of
    France?")."""
    engine = engine_config(config)
    extra = engine.extra_args
    if config.engine == "vllm" and not any(a == "--dtype" or a.startswith("--dtype=") for a in extra):
        extra = (*extra, "--dtype", "float32")
    return dataclasses.replace(engine, model=model_path, extra_args=extra)


def stored_source(model: str) -> str:
    """The source a model folder came from when the head's store put it here ("" otherwise)."""
    if is_bundled(model) or not model.startswith(("/", "~")):
        return ""
    manifest = ModelFolder(Path(model).expanduser()).manifest()
    return manifest.source if manifest else ""


async def _engine_config(config: AgentConfig) -> EngineConfig:
    if config.engine == "sim":
        return engine_config(config)
    if await asyncio.to_thread(stored_source, config.model) == BUNDLED_NAME:  # as the head's store copied it
        return bundled_defaults(config, config.model)
    if not is_bundled(config.model):
        return engine_config(config)
    log.info("preparing the bundled model %s (once per host)", BUNDLED_NAME)
    folder = await asyncio.to_thread(prepare_bundled)
    return bundled_defaults(config, str(folder))


def prompt_guard(engine_checks: bool, model: str, ceiling: int | None) -> PromptGuard | None:
    """A guard where the engine lets over-long prompts through and the model folder gives tokenizer and context."""
    if engine_checks or not (Path(model) / "config.json").exists():
        return None
    context = context_of(model, ceiling)
    return PromptGuard(model, context) if context else None


def keep_awake(platform: str, agent_pid: int) -> list[str] | None:
    """A headless Mac idle-sleeps and stops answering; `caffeinate` holds it awake until the agent exits
    (-w): -i idle sleep, -m disk sleep, -s system sleep on AC power. None where there is nothing to do."""
    if platform != "darwin":
        return None
    return ["/usr/bin/caffeinate", "-ims", "-w", str(agent_pid)]


async def serve(config: AgentConfig, stop: asyncio.Event) -> None:
    """Run until `stop` is set; then drain gRPC and stop the engine (terminate, then kill). A vacant agent
    (`--engine none`) starts no engine of its own: its supervisor stays stopped, saying why."""
    adapter = adapter_for("sim" if config.vacant else config.engine)  # a vacant agent's is never launched
    engine_config = await _engine_config(config)
    policy = SupervisorPolicy(ready_timeout_s=config.ready_timeout_s, stall_timeout_s=config.stall_timeout_s)
    fetch = hub_fetch(config.model) if config.engine != "sim" else None
    host = await asyncio.to_thread(read_host_facts)
    usable = host.usable_memory_bytes or int(host.memory_bytes * DEFAULT_USABLE)
    if config.need_gb and usable:  # it shares the Mac with on-demand engines: its own share only
        engine_config = dataclasses.replace(engine_config, memory_share=min(MAX_SHARE, config.need_gb * 1e9 / usable))
    supervisor = EngineSupervisor(adapter, engine_config, config.log_path, policy, fetch=fetch)
    group = GroupController(config.group, supervisor, config.tls_path) if config.group else None
    slots = adapter.capacity(engine_config)
    guard = None if config.vacant else prompt_guard(adapter.checks_context, engine_config.model, config.max_model_len)
    context = guard.context if guard else config.max_model_len or 0
    model = pb.ModelInfo(name=config.served_name, source=config.model, max_model_len=context)
    identity = ServiceIdentity(
        worker_id=config.worker_id,
        models=() if config.vacant else (model,),
        max_concurrency=slots,  # what the router lets through to this worker
        engine_version=adapter.version(engine_config),
        agent_version=build.describe(),
    )
    # Long streams: no per-request timeout on the engine side; connect quickly or fail.
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=5.0),
        limits=httpx.Limits(max_connections=engine_connections(slots)),
    )
    children = (
        None
        if group
        else Children(
            config.listen.rpartition(":")[0], config.log_path / "on-demand", usable, int(config.need_gb * 1e9), config
        )
    )
    service = WorkerService(
        supervisor, identity, host, http, group, guard, config.max_body_bytes, config.tls_path, children
    )
    if guard is not None:  # the tokenizer loads in seconds: not on the first request's time
        asyncio.get_running_loop().run_in_executor(None, guard.load)
    health_servicer = health.aio.HealthServicer()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_body_bytes + ENVELOPE_BYTES),  # as the router allows
            # The router pings every 5 s to find a silent host (cluster/router/registry.py): allowed, not a strike.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 4_000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
    )
    pb_grpc.add_WorkerServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = _add_port(server, config)
    if port == 0:
        raise SystemExit(f"orchard-worker: cannot listen on {config.listen}")
    await server.start()
    if awake := keep_awake(sys.platform, os.getpid()):
        procs.spawn(awake, config.log_path / "caffeinate.log", tied_to_parent=False)
    if config.port_file:
        await asyncio.to_thread(Path(config.port_file).write_text, f"{port}\n")
    log.info("agent %s listening on port %d, engine %s", config.worker_id, port, config.engine)
    if group is not None:
        await group.start()
    if config.vacant:
        supervisor.detail = "no engine of its own: it runs the on-demand engines the router asks for"
    else:
        await supervisor.start()
    health_task = asyncio.create_task(_publish_health(supervisor, health_servicer))
    try:
        await stop.wait()
    finally:
        health_task.cancel()
        if group is not None:
            await group.stop()
        await server.stop(grace=5.0)
        if children is not None:
            await children.stop()
        await supervisor.stop()
        await http.aclose()
        log.info("agent stopped")


AGENT_RESERVED_FDS = 64  # beside connections to the engine: logs, the engine's pipes, the router's channel


def engine_connections(slots: int) -> int:
    """Raise the open-file limit as far as allowed (launchd starts a service with 256); the connections to the
    engine that then fit: two per slot (a stream and a request being placed) where they can."""
    limits = openfiles.raise_limit()
    connections = openfiles.cap(slots * 2, limits, AGENT_RESERVED_FDS)
    log.info("%s: at most %d connections to the engine", limits.describe(), connections)
    return connections


def _add_port(server: grpc.aio.Server, config: AgentConfig) -> int:
    """Mutual TLS with the cluster's certificates; plaintext only on loopback (the config enforces it)."""
    if config.tls_path is None:
        return server.add_insecure_port(config.listen)
    try:
        credentials = tls.server_credentials(config.tls_path)
    except tls.TlsError as exc:
        raise SystemExit(f"orchard-worker: {exc}") from None
    return server.add_secure_port(config.listen, credentials)


async def _publish_health(supervisor: EngineSupervisor, servicer: health.aio.HealthServicer) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    last: EngineState | None = None
    while True:
        if supervisor.state is not last:
            last = supervisor.state
            status = serving if last is EngineState.READY else not_serving
            await servicer.set("", status)
            await servicer.set(SERVICE_NAME, status)
        await asyncio.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    try:
        config = AgentConfig.from_argv(sys.argv[1:] if argv is None else argv)
    except LaunchConfigError as exc:
        sys.stderr.write(f"{usage(AgentConfig)}orchard-worker: error: {exc}\n")
        raise SystemExit(2) from None
    logging.basicConfig(
        level=os.environ.get("ORCHARD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine poll is noise

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    _run(_main())


def _run(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where installed (uvicorn[standard] brings it): it halves the agent's per-chunk latency."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


if __name__ == "__main__":
    main()
