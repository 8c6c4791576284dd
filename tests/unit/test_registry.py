"""How an operator names a worker (cluster drain NAME): its id, its address, or its host when that is unique; and
when a model no agent reports is unavailable rather than unknown."""

from __future__ import annotations

import pytest

from cluster.router.breaker import COOL_DOWN_S, Breaker
from cluster.router.errors import ApiError
from cluster.router.intake import check_known
from cluster.router.operator import worker_row
from cluster.router.registry import LEARN_S, SAMPLE_STALE_S, Registry, WorkerHandle
from cluster.router.rows import Reachability
from proto import orchard_pb2 as pb
from worker.shared.states import EngineState


def test_a_host_shared_by_two_agents_names_both_and_an_address_names_one() -> None:
    registry = Registry(["127.0.0.1:50051", "127.0.0.1:50052", "10.0.0.7:50051"])
    registry.workers["10.0.0.7:50051"].info = pb.InfoReply(worker_id="studio-3")
    assert len(registry.find("127.0.0.1")) == 2  # the router answers 409, naming both
    assert [h.address for h in registry.find("127.0.0.1:50052")] == ["127.0.0.1:50052"]
    assert [h.address for h in registry.find("studio-3")] == ["10.0.0.7:50051"]
    assert [h.address for h in registry.find("10.0.0.7")] == ["10.0.0.7:50051"]
    assert registry.find("studio-9") == []


def test_a_model_is_awaited_while_the_hosts_file_names_it_or_an_agent_has_not_told() -> None:
    """What a request for a model no agent reports gets: 503 (awaited) or 404 (unknown)."""
    registry = Registry(["127.0.0.1:1", "127.0.0.1:2"], expected=("served",))
    assert registry.awaited("served") and registry.awaited("typo")  # one agent has not told its models yet
    registry.workers["127.0.0.1:1"].info = pb.InfoReply(models=[pb.ModelInfo(name="served")])
    assert registry.awaited("typo")
    registry.workers["127.0.0.1:2"].info = pb.InfoReply()
    assert registry.awaited("served") and not registry.awaited("typo")  # all told: a name nobody serves
    silent = Registry(["127.0.0.1:3"], expected=("served",))
    silent.started_at -= LEARN_S  # an agent silent since the router started: not waited for beyond LEARN_S
    assert silent.awaited("served") and not silent.awaited("typo")
    with pytest.raises(ApiError) as unavailable:
        check_known("served", silent.awaited)
    with pytest.raises(ApiError) as unknown:
        check_known("typo", silent.awaited)
    assert (unavailable.value.status, unavailable.value.code) == (503, "model_not_ready")
    assert (unknown.value.status, unknown.value.code) == (404, "model_not_found")


READY = EngineState.READY.to_wire()


@pytest.mark.parametrize(
    ("silent_s", "health_failures", "breaker_opened_s_ago", "state", "detail"),
    [
        (0.5, 0, None, EngineState.READY, ""),
        (SAMPLE_STALE_S + 1, 0, None, Reachability.HUNG, "no state from its agent for 6 s"),  # a stopped agent
        (0.5, 1, None, EngineState.READY, ""),  # one slow health check under load: not yet
        (0.5, 2, None, Reachability.HUNG, "its engine failed 2 health check(s) in a row"),  # a stopped engine
        (0.5, 0, 0.5, Reachability.SUSPECT, ""),  # failures just now: breaker open
        (0.5, 0, COOL_DOWN_S + 0.5, Reachability.HALF_OPEN, "failed lately; one request probes it"),
        (SAMPLE_STALE_S + 1, 0, COOL_DOWN_S + 0.5, Reachability.HUNG, "no state from its agent for 6 s"),
    ],
)
def test_a_worker_shows_hung_suspect_and_half_open_for_what_they_are(
    silent_s: float, health_failures: int, breaker_opened_s_ago: float | None, state: object, detail: str
) -> None:
    now = 1000.0
    handle = WorkerHandle(
        "127.0.0.1:1",
        connected=True,
        sample_at=now - silent_s,
        sample=pb.LoadSample(state=READY, health_failures=health_failures),
    )
    if breaker_opened_s_ago is not None:
        handle.breaker = Breaker(failures=2, opened_at=now - breaker_opened_s_ago)
    row = worker_row(handle, now)
    assert (row.state, row.detail) == (state, detail)
    assert row.down == (state in (Reachability.HUNG, Reachability.SUSPECT))
    assert handle.ready(now) == (state in (EngineState.READY, Reachability.HALF_OPEN))  # what routing may choose
