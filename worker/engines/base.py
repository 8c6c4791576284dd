"""What every engine adapter provides: how to launch the engine on 127.0.0.1 (a command line, environment and
files), where its health and metrics are, how to empty its prefix cache, and its version.

The supervisor (worker/supervisor.py) owns the lifecycle; adapters only describe the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from worker.shared.launch import AgentConfig, GroupRole

DEFAULT_SLOTS: int = AgentConfig.model_fields["max_concurrency"].default  # the agent's --max-concurrency


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
    sim_options: tuple[tuple[str, str], ...] = field(default=())
    group: GroupRole | None = None
    state_dir: str = ""  # where the agent keeps files the engine reads (the group's hostfile)
    max_concurrency: int | None = None  # what the agent lets in at once: the engine's batch where it has a flag
    task: str = "generate"  # "generate" | "embed" (vLLM's pooling runner)
    tool_parser: str | None = None  # vLLM's tool-call parser: None chooses from the model's files, "off" none
    reasoning_parser: str | None = None  # the same for its reasoning parser
    # The share of the host's working set this engine may hold (weights and KV cache), where it shares the Mac
    # with other engines (on-demand models); None: the engine's own default (vllm-metal: "auto", 0.92)
    memory_share: float | None = None


@dataclass(frozen=True)
class LaunchPlan:
    argv: tuple[str, ...]
    env: dict[str, str]
    files: tuple[tuple[str, str], ...] = ()  # (path, text) the supervisor writes before each start
    serves_http: bool = True  # False for shard-group ranks other than 0: they follow rank 0, answer nothing
    # What this engine will do for the model beyond plain text (worker/shared/capabilities.py); None: not known
    capabilities: tuple[str, ...] | None = None


class EngineAdapter(Protocol):
    name: str
    health_path: str  # answers 200 once the server is up (readiness still needs a real token)
    metrics_path: str | None  # Prometheus text with vLLM's metric names; None: the engine exports none
    running_usage: bool  # streams can carry running token counts (vLLM's continuous_usage_stats)
    unsupported: tuple[str, ...]  # request parameters it cannot honour (the router refuses them: 400)
    checks_context: bool  # answers an over-long prompt with 400 itself (else the agent's PromptGuard does)

    def plan(self, config: EngineConfig, port: int) -> LaunchPlan:
        """The subprocess to start so that it serves OpenAI on 127.0.0.1:port."""
        ...

    def version(self, config: EngineConfig) -> str:
        """The engine's version, for Info (best effort, no subprocess)."""
        ...

    def capacity(self, config: EngineConfig) -> int:
        """Requests the engine takes at once: the agent's cap, or less where the engine args set a smaller
        batch (vLLM's --max-num-seqs, mlx-lm's --decode-concurrency). More would queue inside the engine,
        unfairly, or (mlx-lm) fail to connect; the agent declares this and the router holds the rest."""
        ...


def flag_value(argv: tuple[str, ...] | list[str], flag: str) -> int | None:
    """The integer after `flag` (or in `flag=N`) in an engine's extra args, if given."""
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv) and argv[index + 1].isdigit():
            return int(argv[index + 1])
        if arg.startswith(flag + "=") and arg.split("=", 1)[1].isdigit():
            return int(arg.split("=", 1)[1])
    return None


def capped(config: EngineConfig, given: int | None) -> int:
    """The agent's slots, or fewer where the engine is set to batch fewer."""
    wanted = config.max_concurrency or DEFAULT_SLOTS
    return min(wanted, given) if given else wanted
