"""The lab's hosts file (TOML): typed, frozen, validated once at load; errors name the file, line and key.

    [router]            bind address and port of the OpenAI endpoint on the head node
    [placement]         usable share of each host's memory, KV-cache reserve per model
    [[hosts]]           one per Mac: address, ssh user/port/identity, name, python, engine, memory, labels
    [[models]]          name clients use, source, engine args, `replicas = N` or `hosts = [...]`, and for
                        models bigger than one Mac a shard group: `mode`, `backend`, `transport`; a model loaded
                        on request instead: `load = "on-demand"`, `keep_alive`, `min_replicas`, `max_replicas`

See deploy/hosts.example.toml for every key with a comment.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.shared.launch import PARSER_NAME, STALL_TIMEOUT_S, EngineKind, Policy
from worker.shared.rayports import RAY_PORT_SPAN

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings(item)]
    return []


class HostsFileError(Exception):
    """Invalid hosts file. str() is `FILE:LINE: message` — nothing is started when this is raised."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        """No value may hold a control character: several reach a remote shell, a launchd plist or a systemd unit
        (quoted), where a newline would start another line."""
        for text in _strings(value):
            if _CONTROL.search(text):
                raise ValueError(f"{text!r} holds a control character (newline, tab, …)")
        return value


class RouterSpec(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    no_auth: bool = False  # serve beyond loopback without API keys (the router warns at every start)
    max_queue: int = Field(default=256, ge=0, le=100_000)  # requests that may wait per model
    log_format: Literal["text", "json"] = "text"  # json: the router logs one JSON object per line
    # HTTPS on the endpoint: the operator's certificate chain and key (PEM files on the head), or `tls = true`
    # for one from the cluster CA naming this machine, `host` and `tls_names` (clients trust ~/.orchard/ca/ca.pem)
    tls: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_names: tuple[str, ...] = Field(default=(), strict=False)

    @model_validator(mode="after")
    def _tls_pair(self) -> RouterSpec:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both 'tls_cert' and 'tls_key', or neither")
        return self


DEFAULT_MEMORY_FRACTION = 0.75  # Metal's recommended working set is about 3/4 of RAM on large Macs


class PlacementSpec(_Strict):
    # Share of a host's unified memory a model may use (vllm-metal's VLLM_METAL_MEMORY_FRACTION plays this role
    # on the engine side; macOS keeps the rest for itself). Unset: the Mac's own report of Metal's recommended
    # working set, else DEFAULT_MEMORY_FRACTION.
    memory_fraction: float | None = Field(default=None, gt=0, le=1, strict=False)
    # KV cache and activations, as a share of the weights, on top of them.
    kv_reserve_fraction: float = Field(default=0.1, ge=0, le=10, strict=False)


class HostSpec(_Strict):
    address: str = Field(min_length=1)
    name: str | None = Field(default=None, pattern=_NAME)
    user: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    identity_file: str | None = None
    known_hosts: str | None = None  # default: ~/.ssh/known_hosts
    verify_host_key: bool = True  # false only for throw-away test hosts
    python: str | None = None  # Orchard's interpreter on that host; default: the one `cluster install` made
    engine_python: str | None = None  # the vLLM engine's interpreter; default on a Mac: ~/.venv-vllm-metal
    orchard_dir: str = "~/.orchard"  # agent pidfile, logs and TLS folder on that host
    agent_port: int = Field(default=50051, ge=1, le=65535)
    engine: EngineKind = "vllm"
    memory_gb: float | None = Field(default=None, gt=0, strict=False)  # overrides what the host reports
    memory_fraction: float | None = Field(default=None, gt=0, le=1, strict=False)  # overrides [placement]
    group_address: str | None = None  # shard-group traffic (e.g. a Thunderbolt bridge IP); default: address
    # This host's shard-group rank: an MLX rank listens on group_port; a vLLM rank's Ray uses group_port ..
    # group_port + RAY_PORT_SPAN - 1 (worker/shared/rayports.py), several of them on every interface (Ray binds
    # no address): let the firewall pass that range on the group link only.
    group_port: int = Field(default=52100, ge=1, le=65535)
    # mlx jaccl (RDMA over Thunderbolt 5): this Mac's RDMA device towards each other host, by host name, as
    # `mlx.distributed_config --backend jaccl` finds them, e.g. { studio-2 = "rdma_en5", studio-3 = "rdma_en4" }
    rdma_devices: dict[str, str] = Field(default_factory=dict)
    labels: tuple[str, ...] = Field(default=(), strict=False)  # TOML arrays are lists
    sim_options: dict[str, str | int | float] = Field(default_factory=dict)

    @field_validator("orchard_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not (value == "~" or value.startswith(("~/", "/"))):
            raise ValueError(f"{value!r}: give an absolute path or one under ~/")
        return value

    @model_validator(mode="after")
    def _ray_ports_fit(self) -> HostSpec:
        last = self.group_port + RAY_PORT_SPAN - 1
        if self.engine == "vllm" and last > 65535:
            raise ValueError(
                f"group_port {self.group_port}: a vLLM group's Ray needs {RAY_PORT_SPAN} ports from it; "
                f"give one up to {65536 - RAY_PORT_SPAN}"
            )
        if self.engine == "vllm" and self.group_port <= self.agent_port <= last:
            raise ValueError(
                f"agent_port {self.agent_port} falls in the Ray ports of this host's vLLM group rank "
                f"({self.group_port}..{last}): move one of them"
            )
        return self

    @property
    def label(self) -> str:
        return self.name or self.address

    @property
    def agent_address(self) -> str:
        """What the router dials its agent by."""
        return f"{self.address}:{self.agent_port}"


class ModelSpec(_Strict):
    name: str = Field(min_length=1)
    source: str = Field(min_length=1)
    # A hub id's commit, branch or tag: the store pulls that one and every host gets it (default: the store's
    # newest copy, else the hub's main branch).
    revision: str | None = Field(default=None, min_length=1, max_length=200)
    engine_args: tuple[str, ...] = Field(default=(), strict=False)
    replicas: int | None = Field(default=None, ge=1, le=1024)
    hosts: tuple[str, ...] | None = Field(default=None, strict=False)
    max_model_len: int | None = Field(default=None, ge=16)
    policy: Policy | None = None  # routing; default: the router's
    size_gb: float | None = Field(default=None, gt=0, strict=False)  # weights; default: measured from the files
    kv_reserve_gb: float | None = Field(default=None, ge=0, strict=False)  # overrides [placement]
    # A shard group: one replica spread over several hosts. Chosen by placement when the model fits no host;
    # `mode` (and `hosts`) pin it.
    mode: Literal["pipeline", "tensor"] | None = None
    backend: Literal["mlx", "vllm"] | None = None  # default: the group's hosts' engine
    transport: Literal["ring", "jaccl"] = "ring"  # MLX: ring over TCP (Ethernet or Thunderbolt IPs) | jaccl RDMA
    task: Literal["generate", "embed"] = "generate"  # embed: served for /v1/embeddings (vLLM's pooling runner)
    # vLLM's parsers for tool calls and thinking: default chosen from the model's config and chat template;
    # a parser's name overrides the choice, "off" turns it off
    tool_parser: str | None = Field(default=None, pattern=PARSER_NAME)
    reasoning_parser: str | None = Field(default=None, pattern=PARSER_NAME)
    layers: int | None = Field(default=None, ge=1)  # transformer layers; default: config.json on the head or a host
    # How long an engine may take from start to its first real token (weights read into memory, compiled);
    # a 70B model from a slow disk needs more than the default.
    ready_timeout_s: float = Field(default=600.0, gt=0, le=86_400, strict=False)
    # How long its engine may produce no token, with requests in flight, before the agent restarts it as hung.
    # A prompt's prefill counts: vLLM on a CPU (and engines without chunked prefill) takes a whole prompt in one
    # step, so a long prompt on a slow engine needs more than the default.
    stall_timeout_s: float = Field(default=STALL_TIMEOUT_S, gt=0, le=86_400, strict=False)
    # "pinned": loaded at `cluster up`, never unloaded. "on-demand": loaded on its first request (on a host with
    # room; `hosts` then lists where it may go), unloaded after `keep_alive` idle or to make room, kept between
    # `min_replicas` and `max_replicas` by its queue.
    load: Literal["pinned", "on-demand"] = "pinned"
    keep_alive: float = Field(default=300.0, gt=0, le=7 * 86_400, strict=False)  # seconds, or "5m", "1h"
    min_replicas: int = Field(default=0, ge=0, le=1024)
    max_replicas: int = Field(default=1, ge=1, le=1024)

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        """Ollama's way too: a number of seconds, or a number with s, m or h."""
        if isinstance(value, str) and (found := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", value)):
            return float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2)]
        return value

    @model_validator(mode="after")
    def _placement(self) -> ModelSpec:
        if self.replicas is not None and self.hosts is not None:
            raise ValueError("give either 'replicas' or 'hosts', not both")
        if self.load == "on-demand" and (self.mode is not None or self.replicas is not None):
            raise ValueError(
                "an on-demand model runs on one host per replica: give min_replicas and max_replicas, not "
                "'replicas' or 'mode'"
            )
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})")
        if self.mode is not None and self.hosts is not None and len(self.hosts) < 2:
            raise ValueError(f"a {self.mode} group needs at least 2 hosts")
        if self.mode == "tensor" and self.backend == "vllm":
            raise ValueError("vllm-metal does not support tensor parallelism: use mode = 'pipeline' or backend = 'mlx'")
        return self


class ClusterSpec(_Strict):
    router: RouterSpec = Field(default_factory=RouterSpec)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    hosts: tuple[HostSpec, ...] = Field(min_length=1, strict=False)
    models: tuple[ModelSpec, ...] = Field(min_length=1, strict=False)

    def host(self, label: str) -> HostSpec:
        for host in self.hosts:
            if label in (host.name, host.address):
                return host
        raise KeyError(label)


@dataclass
class _Locator:
    """Line numbers of tables and keys, found by scanning the text (tomllib keeps none)."""

    tables: dict[tuple[str, int], int]  # ("hosts", 0) -> line of its header
    keys: dict[tuple[str, int, str], int]  # ("hosts", 0, "address") -> line of that key

    @classmethod
    def scan(cls, text: str) -> _Locator:
        tables: dict[tuple[str, int], int] = {}
        keys: dict[tuple[str, int, str], int] = {}
        counts: dict[str, int] = {}
        current: tuple[str, int] = ("", 0)
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if match := re.match(r"^\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]", line):
                name = match.group(1)
                current = (name, counts.get(name, 0))
                counts[name] = current[1] + 1
                tables[current] = number
            elif match := re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", line):
                current = (match.group(1), 0)
                tables[current] = number
            elif match := re.match(r"^([A-Za-z0-9_-]+|\"[^\"]+\")\s*=", line):
                keys.setdefault((current[0], current[1], match.group(1).strip('"')), number)
        return cls(tables, keys)

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """Best line for a pydantic error location like ("hosts", 1, "port")."""
        if not loc:
            return None
        table = str(loc[0])
        index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
        key = next((str(part) for part in loc[1:] if isinstance(part, str)), None)
        if key is not None and (table, index, key) in self.keys:
            return self.keys[(table, index, key)]
        if (table, index) in self.tables:
            return self.tables[(table, index)]
        return self.keys.get(("", 0, table))


def _describe(error: Any) -> str:
    loc = error["loc"]
    where = ".".join(str(p) for p in loc)
    key = next((str(p) for p in reversed(loc) if isinstance(p, str)), where)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{key}' in {_table_name(loc)}"
    if kind == "missing":
        return f"missing required key '{key}' in {_table_name(loc)}"
    return f"'{where}': {error['msg']}"


def _table_name(loc: tuple[Any, ...]) -> str:
    if len(loc) > 1 and isinstance(loc[1], int):
        return f"[[{loc[0]}]] #{loc[1] + 1}"
    return f"[{loc[0]}]" if len(loc) > 1 else "the file"


def load(path: Path) -> ClusterSpec:
    """Parse and validate a hosts file; raises HostsFileError naming file and line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise HostsFileError(path, None, f"cannot read: {exc.strerror}") from exc
    return parse(text, path)


def parse(text: str, path: Path) -> ClusterSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        raise HostsFileError(path, int(match.group(1)) if match else None, f"not valid TOML: {exc}") from exc
    locator = _Locator.scan(text)
    try:
        spec = ClusterSpec.model_validate(data)
    except ValidationError as exc:
        # An unknown key is usually a typo of a "missing" one: name the typo first.
        first = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        raise HostsFileError(path, locator.line_of(tuple(first["loc"])), _describe(first)) from exc
    _check_references(spec, locator, path)
    return spec


def _check_references(spec: ClusterSpec, locator: _Locator, path: Path) -> None:
    seen: dict[str, int] = {}
    for index, host in enumerate(spec.hosts):
        for key, value in (("name", host.name), ("address", host.address)):
            if value is None:
                continue
            ident = f"{host.address}:{host.agent_port}" if key == "address" else value
            if ident in seen:
                line = locator.line_of(("hosts", index, key))
                raise HostsFileError(path, line, f"duplicate host {key} '{value}' (also host #{seen[ident] + 1})")
            seen[ident] = index
    labels = {h.name for h in spec.hosts if h.name} | {h.address for h in spec.hosts}
    names: dict[str, int] = {}
    for index, model in enumerate(spec.models):
        if model.name in names:
            line = locator.line_of(("models", index, "name"))
            raise HostsFileError(
                path, line, f"duplicate model name '{model.name}' (also model #{names[model.name] + 1})"
            )
        names[model.name] = index
        for label in model.hosts or ():
            if label not in labels:
                line = locator.line_of(("models", index, "hosts"))
                raise HostsFileError(path, line, f"model '{model.name}' is placed on unknown host '{label}'")
        if model.hosts is not None and len(model.hosts) != len(set(model.hosts)):
            line = locator.line_of(("models", index, "hosts"))
            raise HostsFileError(path, line, f"model '{model.name}' lists a host twice")
