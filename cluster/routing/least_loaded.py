"""Fewest requests in flight (the router's count plus the engine's queue), ties by KV-cache use."""

from __future__ import annotations

from cluster.routing.types import Decision, WorkerView


def pick(workers: list[WorkerView]) -> Decision:
    best = min(workers, key=lambda w: (w.busy, w.load.kv_cache_usage, w.worker_id))
    return Decision(best.worker_id, "least_loaded")
