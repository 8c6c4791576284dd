"""Each ready worker in turn (the router advances the turn after every decision)."""

from __future__ import annotations

from cluster.routing.types import Decision, WorkerView


def pick(workers: list[WorkerView], turn: int) -> Decision:
    ordered = sorted(workers, key=lambda w: w.worker_id)
    return Decision(ordered[turn % len(ordered)].worker_id, "round_robin")
