"""Engine adapters, one module per engine (vllm, mlx, sim): launch plan, health and metrics paths, prefix-cache
reset, version. programs/ holds the processes they launch."""

from __future__ import annotations

from worker.engines.base import EngineAdapter
from worker.engines.mlx import MlxEngine
from worker.engines.sim import SimEngine
from worker.engines.vllm import VllmEngine
from worker.shared.launch import ENGINE_KINDS


def adapter_for(kind: str) -> EngineAdapter:
    if kind == "vllm":
        return VllmEngine()
    if kind == "mlx":
        return MlxEngine()
    if kind == "sim":
        return SimEngine()
    raise ValueError(f"unknown engine {kind!r}; choose one of: {', '.join(ENGINE_KINDS)}")
