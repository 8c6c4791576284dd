"""The `sim` engine adapter: runs worker/engines/programs/sim/server.py as the engine subprocess."""

from __future__ import annotations

import sys

from worker.engines.base import EngineConfig, LaunchPlan, capped

SIM_OPTIONS = (
    "seed",
    "overhead-ms",
    "prefill-ms-per-token",
    "decode-ms-per-token",
    "batch-slowdown",
    "max-concurrency",
    "kv-blocks",
    "stamp-chunks",
    "lockstep",
    "hang-after-tokens",
)


class SimEngine:
    name = "sim"
    health_path = "/health"
    metrics_path: str | None = "/metrics"
    running_usage = True  # stream_options.continuous_usage_stats, as vLLM
    unsupported: tuple[str, ...] = ("n", "response_format", "logprobs", "tools")  # it times, it does not think
    checks_context = False  # and it has no tokenizer for the agent to count with: load studies only

    def capacity(self, config: EngineConfig) -> int:
        given = dict(config.sim_options).get("max-concurrency", "")
        return capped(config, int(given) if given.isdigit() else None)

    def plan(self, config: EngineConfig, port: int) -> LaunchPlan:
        argv = [
            config.python or sys.executable,
            "-m",
            "worker.engines.programs.sim",
            "--port",
            str(port),
            "--model",
            config.served_name,
        ]
        for key, value in config.sim_options:
            if key not in SIM_OPTIONS:
                raise ValueError(f"unknown sim option {key!r}; known: {', '.join(SIM_OPTIONS)}")
            argv += [f"--{key}", value]
        return LaunchPlan(argv=tuple(argv), env={}, capabilities=())

    def version(self, config: EngineConfig) -> str:
        return "orchard-sim 1"
