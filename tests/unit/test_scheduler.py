"""Worker choice (least loaded) on hand-made snapshots."""

from __future__ import annotations

from cluster.routing.choose import Decision, RequestView, RoutingState, WorkerView, choose
from worker.shared.load import Load


def pick(views: list[WorkerView], exclude: frozenset[str] = frozenset()) -> Decision | None:
    return choose("least_loaded", RequestView("m", None, (), 0), views, RoutingState(), 0.0, exclude)


def test_no_ready_worker_gives_none() -> None:
    assert pick([WorkerView("a", ready=False, inflight=0)]) is None
    assert pick([]) is None


def test_least_in_flight_wins() -> None:
    views = [WorkerView("a", True, inflight=3), WorkerView("b", True, inflight=1), WorkerView("c", False, 0)]
    decision = pick(views)
    assert decision is not None and decision.worker_id == "b" and decision.reason == "least_loaded"


def test_excluded_worker_is_skipped_for_a_retry() -> None:
    views = [WorkerView("a", True, inflight=0), WorkerView("b", True, inflight=5)]
    decision = pick(views, exclude=frozenset({"a"}))
    assert decision is not None and decision.worker_id == "b"


def test_engine_queue_breaks_ties() -> None:
    views = [WorkerView("a", True, inflight=1, load=Load(waiting=4)), WorkerView("b", True, inflight=1, load=Load())]
    decision = pick(views)
    assert decision is not None and decision.worker_id == "b"
