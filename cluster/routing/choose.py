"""Choosing a worker: pure functions over a snapshot of the registry (no I/O).

`choose` dispatches to one policy module (cluster/routing/). The router owns the mutable routing state
(round-robin turn, prefix index, session pins) and updates it after a decision; policies only read it.
"""

from __future__ import annotations

from cluster.routing import least_loaded, prefix, round_robin
from cluster.routing.types import Decision, RequestView, RoutingState, WorkerView
from worker.shared.launch import POLICIES, Policy

__all__ = ["POLICIES", "Decision", "Policy", "RequestView", "RoutingState", "WorkerView", "choose"]


def ready_workers(candidates: list[WorkerView], exclude: frozenset[str]) -> list[WorkerView]:
    return [w for w in candidates if w.ready and w.worker_id not in exclude]


def choose(
    policy: str,
    request: RequestView,
    candidates: list[WorkerView],
    state: RoutingState,
    now: float,
    exclude: frozenset[str] = frozenset(),
) -> Decision | None:
    workers = ready_workers(candidates, exclude)
    if not workers:
        return None
    if policy == "round_robin":
        return round_robin.pick(workers, state.turn)
    if policy == "least_loaded":
        return least_loaded.pick(workers)
    if policy == "prefix":
        return prefix.pick(request, workers, state, now)
    raise ValueError(f"unknown routing policy {policy!r}; choose one of: {', '.join(POLICIES)}")
