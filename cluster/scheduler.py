"""Choosing a worker: pure functions over a snapshot of the registry (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerView:
    """What the scheduler sees of one worker at decision time."""

    worker_id: str
    ready: bool
    inflight: int  # the router's own count of requests on this worker now
    running: int = 0  # engine-reported
    waiting: int = 0
    kv_cache_usage: float = 0.0


@dataclass(frozen=True)
class Decision:
    worker_id: str
    reason: str


def pick(candidates: list[WorkerView], exclude: frozenset[str] = frozenset()) -> Decision | None:
    """Least loaded ready worker: router in-flight first (fresh), then engine queue, then KV use."""
    ready = [w for w in candidates if w.ready and w.worker_id not in exclude]
    if not ready:
        return None
    best = min(ready, key=lambda w: (w.inflight, w.waiting, w.kv_cache_usage, w.worker_id))
    return Decision(best.worker_id, "least_loaded")
