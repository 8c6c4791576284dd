"""What `python -m worker.daemon` prints (one JSON line) and the head reads over SSH: typed on both sides.

The daemon writes `reply.model_dump_json()`; `cluster/bringup/remote.py` parses it back with the same model,
so a field renamed on one side cannot silently read as missing on the other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

SERVICE_MARK = "agent.service"  # in orchard_dir while a service manager keeps the agent: `daemon run` writes it,
# `cluster down` (uninstalling the service) removes it


class _Reply(BaseModel):
    # extra="ignore": a host running a newer daemon may say more than this head knows.
    model_config = ConfigDict(frozen=True, extra="ignore")


class AgentStatus(_Reply):
    """`status`: is the agent running, and under which configuration hash."""

    status: Literal["running", "stopped"]
    pid: int | None = None
    hash: str = ""
    service: str = ""  # "launchd" | "systemd" when a service manager runs it (`daemon run`); "" when detached


class StartReply(_Reply):
    """`start`: kept (same hash, `changed` false), started, or failed at once (with the log's tail)."""

    status: Literal["running", "started", "failed"]
    pid: int | None = None
    hash: str = ""
    changed: bool
    log: str = ""


class StopReply(_Reply):
    status: Literal["stopped"] = "stopped"
    pid: int | None = None
    was_running: bool


class GroupCheckReply(_Reply):
    """`groupcheck`: what a vLLM shard group over Ray needs from each member host (vllm-metal's
    docs/distributed.md): the hostname resolving to the group address, Ray in the engine's venv, matching
    Python versions, and a firewall that lets the group's ports through."""

    hostname: str
    hostname_addresses: list[str]  # what the hostname resolves to here
    group_addresses: list[str] = []  # what the member's group address resolves to here (a name, or the IP)
    engine_python: str
    python_version: str = ""  # of the engine's interpreter; "" when it does not run
    ray_version: str = ""  # "" when Ray does not import there
    # none: no macOS firewall; unlisted: on, and it has no rule for the engine's interpreter
    firewall: Literal["off", "allows", "blocks", "unlisted", "unknown", "none"] = "none"
    firewall_detail: str = ""


class MlxCheckReply(_Reply):
    """`mlxcheck`: what an MLX shard group needs from each member (worker/mlxcheck.py)."""

    local_addresses: list[str]
    address_local: bool  # the group address is one of this host's own
    port_free: bool  # the group port could be listened on now
    agent_running: bool  # an agent runs here now (a port it holds is its own group's)
    mlx_version: str = ""
    mlx_lm_version: str = ""
    python: str = ""  # the interpreter the mlx engine runs with
    firewall: Literal["off", "allows", "blocks", "unlisted", "unknown", "none"] = "none"
    firewall_detail: str = ""
    macos_version: str = ""  # jaccl: `sw_vers -productVersion`
    rdma_devices: list[str] | None = None  # jaccl: `ibv_devices`; None when not asked


class ModelFacts(_Reply):
    """What a model's files say, read where they are (worker/shared/modelfiles.py): on the head, or on a rank host
    that holds the model when the head does not. `present` false: the files are not on that machine."""

    present: bool = False
    weights_gb: float | None = None
    layers: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    hidden: int | None = None
    intermediate: int | None = None
    model_type: str = ""  # config.json's model_type: mlx-lm's module for the architecture
    # how that machine's mlx-lm splits it into a pipeline: as planned, evenly only, not at all; "": not known
    mlx_pipeline: Literal["planned", "even", "none", ""] = ""

    def tensor_divisors(self) -> dict[str, int]:
        """The sizes tensor parallelism splits: each must divide by the group size."""
        named = {
            "attention heads": self.heads,
            "KV heads": self.kv_heads,
            "hidden size": self.hidden,
            "MLP size": self.intermediate,
        }
        return {name: value for name, value in named.items() if value}


class HostFactsReply(_Reply):
    """`facts`: what preflight and placement need to know about a host."""

    hostname: str
    os: str
    chip: str
    memory_bytes: int
    usable_memory_bytes: int = 0  # Metal's recommended working set (macOS); 0: not reported
    python: str
    platform: str
    engines: dict[str, bool]
    orchard_version: str = ""  # "" from a daemon older than these fields
    build: str = ""  # worker.shared.build.digest(): equal on head and host when both run the same code
    models: dict[str, ModelFacts] = {}  # by source, for the sources the head asked about (`--model`)


class HeldModel(_Reply):
    """One model revision in a host's store (`models`): how much of it is there and checked."""

    source: str
    revision: str
    files: int  # in the model
    verified: int  # held here and verified (a pipeline rank holds only its own)
    size: int  # bytes of the model
    held: int  # bytes on this host's disk
    folder: str


class ModelsReply(_Reply):
    """`models`: the model store on this host."""

    models: list[HeldModel] = []
