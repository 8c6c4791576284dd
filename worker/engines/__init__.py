"""Engine adapters: one small module per engine (vllm, sim)."""

from __future__ import annotations

from worker.engines.base import EngineAdapter
from worker.engines.sim import SimEngine
from worker.engines.vllm import VllmEngine

ENGINES = ("vllm", "sim")


def adapter_for(kind: str) -> EngineAdapter:
    if kind == "vllm":
        return VllmEngine()
    if kind == "sim":
        return SimEngine()
    raise ValueError(f"unknown engine {kind!r}; choose one of: {', '.join(ENGINES)}")
