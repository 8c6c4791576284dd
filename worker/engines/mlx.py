"""The `mlx` engine: mlx-lm's OpenAI server (worker/engines/programs/mlx_server.py), on one host or as a
shard-group rank.

On macOS MLX computes on the GPU. On Linux `mlx[cpu]` runs the same code on the CPU; its wheel ships netlib's
reference BLAS, so when Debian's OpenBLAS is installed (`libopenblas0-pthread`) it is preloaded (a fp32
matmul 50x faster, SmolLM2 prefill 20 -> 346 tok/s).

A group rank gets MLX's own launch interface (what `mlx.launch` sets over SSH), per MLX's distributed docs:
ring: `MLX_RANK` and `MLX_HOSTFILE`, a JSON list with one entry per rank, each that rank's "ip:port"
(Ethernet or Thunderbolt-bridge addresses alike); jaccl (RDMA over Thunderbolt 5): `MLX_RANK`,
`MLX_JACCL_COORDINATOR` (rank 0's ip:port) and `MLX_IBV_DEVICES`, the matrix of RDMA device names from each
rank to each other rank (from the hosts file's `rdma_devices`, as `mlx.distributed_config` reports them).
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

from worker.engines.base import EngineConfig, LaunchPlan, capped, flag_value
from worker.engines.parsers import read_signals
from worker.shared import modelfiles
from worker.shared.capabilities import REASONING, TOOLS

OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3")


# mlx-lm's server parses tool calls where its tokenizer wrapper found a tool parser for the chat template, and
# splits off thinking where it found think markers (mlx_lm/tokenizer_utils.py: _infer_tool_parser,
# _infer_thinking); the template markers it looks for, in its order.
MLX_TOOL_MARKERS = (
    ("<minimax:tool_call>",),
    ("<|tool_call>", "<tool_call|>"),
    ("<start_function_call>",),
    ("<longcat_tool_call>",),
    ("<arg_key>",),
    ("<|tool_list_start|>",),
    ("<|tool_call_start|>",),
    ("<tool_call>\\n<function=",),
    ("<tool_call>\n<function=",),
    ("<|tool_calls_section_begin|>",),
    ('<function name="', '<param name="'),
    ("[TOOL_CALLS]",),
    ("<atem:function_calls>",),
    ("<tool_call>", "tool_call.name"),
)
MLX_THINK_MARKERS = ("<think>", "<longcat_think>", "<|think:start|>", "<|channel>", "<|open|>think")


def mlx_capabilities(model: str) -> tuple[str, ...] | None:
    """What mlx-lm's server will do for the model, from its chat template (None: no local folder to read: not
    fetched yet)."""
    folder = modelfiles.local_folder(model)
    if folder is None:
        return None
    template = read_signals(folder).template
    tools = any(all(marker in template for marker in markers) for markers in MLX_TOOL_MARKERS)
    thinks = any(marker in template for marker in MLX_THINK_MARKERS)
    return (*([TOOLS] if tools else []), *([REASONING] if thinks else []))


def ring_hostfile(members: tuple[str, ...]) -> str:
    return json.dumps([[member] for member in members])


class MlxEngine:
    name = "mlx"
    health_path = "/health"
    metrics_path: str | None = None  # mlx-lm's server has no /metrics
    running_usage = False  # mlx-lm reports usage only at the end of a stream
    # mlx-lm's server answers n > 1 with one choice and ignores response_format: refused, not faked
    unsupported: tuple[str, ...] = ("n", "response_format")
    checks_context = False  # mlx-lm starts on an over-long prompt and hangs

    def capacity(self, config: EngineConfig) -> int:
        return capped(config, flag_value(config.extra_args, "--decode-concurrency"))

    def __init__(self, platform: str = sys.platform, openblas: Path = OPENBLAS) -> None:
        self.platform = platform
        self.openblas = openblas

    def plan(self, config: EngineConfig, port: int) -> LaunchPlan:
        argv = [
            config.python or sys.executable,
            "-m",
            "worker.engines.programs.mlx_server",
            "--model",
            config.model,
            "--served-name",
            config.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        env: dict[str, str] = {}
        if Path(config.model).exists():
            env["HF_HUB_OFFLINE"] = "1"
        if self.platform == "linux" and self.openblas.exists():
            env["LD_PRELOAD"] = str(self.openblas)
            if config.group is not None:
                # CPU stand-in: the ranks share the machine's cores (and MLX's ring busy-waits while a rank
                # waits for the others); one BLAS thread per rank halves the time per token here.
                env["OPENBLAS_NUM_THREADS"] = "1"
        files: tuple[tuple[str, str], ...] = ()
        group = config.group
        if group is not None:
            if group.backend != "mlx":
                raise ValueError(f"the mlx engine cannot run a {group.backend} group")
            stem = str(Path(config.state_dir or ".") / f"mlx-group-{group.name.replace('#', '-')}")
            env["MLX_RANK"] = str(group.rank)
            if group.transport == "jaccl":
                # MLX's JACCL interface: rank 0's coordinator address and the RDMA device matrix.
                if any(device == "" for row in group.rdma for device in row):
                    raise ValueError("jaccl needs every host's rdma_devices towards the others (hosts file)")
                files = ((stem + "-ibv.json", json.dumps([list(row) for row in group.rdma])),)
                env.update({"MLX_JACCL_COORDINATOR": group.members[0], "MLX_IBV_DEVICES": files[0][0]})
                env["MLX_METAL_FAST_SYNCH"] = "1"  # MLX's docs: critical for low-latency communication
            else:
                files = ((stem + ".json", ring_hostfile(group.members)),)
                env["MLX_HOSTFILE"] = files[0][0]
            argv += ["--backend", group.transport]
            if group.mode == "pipeline":
                argv += ["--pipeline-layers", ",".join(map(str, group.layers))]
        if flag_value(config.extra_args, "--decode-concurrency") is None:
            argv += ["--decode-concurrency", str(self.capacity(config))]  # mlx-lm's batch = the agent's slots
        argv += list(config.extra_args)
        serves = group is None or group.rank == 0
        return LaunchPlan(
            argv=tuple(argv), env=env, files=files, serves_http=serves, capabilities=mlx_capabilities(config.model)
        )

    def version(self, config: EngineConfig) -> str:
        try:
            return f"mlx-lm {importlib.metadata.version('mlx-lm')}"
        except importlib.metadata.PackageNotFoundError:
            return "mlx-lm not installed"
