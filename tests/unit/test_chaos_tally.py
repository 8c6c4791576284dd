"""The chaos benchmark's arithmetic, on made-up requests: which fault a request belongs to, what each row counts,
how the retries column reads the router's retry counter (across a router restart too), and which process is the
agent."""

from __future__ import annotations

from cluster.bench.chaos_tally import (
    CALM,
    FaultWindow,
    RequestRecord,
    RetrySample,
    counter_increase,
    healthy,
    retries_total,
    tally,
    window_of,
)
from cluster.bench.netlab import runs_module
from cluster.router.metrics import RouterMetrics
from cluster.router.rows import Reachability, WorkerRow
from worker.shared.states import EngineState

KILL = FaultWindow("kill-engine", "h1", start=10.0, end=10.0, until=14.0, recovery_s=4.0)
STOP = FaultWindow("stop-agent", "h3", start=30.0, end=50.0, until=52.5, recovery_s=2.5)
LOST = FaultWindow("kill-agent", "h2", start=60.0, end=60.0, until=140.0, recovery_s=None, note="repaired")


def ok(started: float, worker: str = "h2") -> RequestRecord:
    return RequestRecord(started, started + 3, "ok", worker, 200)


def row(worker: str, *, ready: bool = True, breaker: str = "closed", draining: bool = False) -> WorkerRow:
    state = EngineState.READY if ready else Reachability.UNREACHABLE
    return WorkerRow(
        address=f"{worker}:50051",
        worker_id=worker,
        state=state,
        models=["sim-model"],
        breaker=breaker,
        draining=draining,
    )


def test_a_request_belongs_to_the_fault_during_whose_window_it_started() -> None:
    windows = [KILL, STOP]
    assert window_of(ok(7.0), windows) is None  # done before the kill
    assert window_of(ok(10.0), windows) is KILL  # the start is inside
    assert window_of(ok(13.9), windows) is KILL  # end + recovery: still the fault's
    assert window_of(ok(14.0), windows) is None  # from then on, calm
    assert window_of(ok(40.0), windows) is STOP


def test_a_request_in_flight_when_a_fault_struck_belongs_to_that_fault() -> None:
    windows = [KILL, STOP]
    cut = RequestRecord(8.0, 10.5, "error_event", "h1", 200)
    assert window_of(cut, windows) is KILL
    assert window_of(RequestRecord(25.0, 35.0, "ok", "h3", 200), windows) is STOP
    assert window_of(RequestRecord(9.0, 10.0, "ok", "h1", 200), windows) is None  # ended as the fault began


def test_each_outcome_is_counted_in_its_own_column_and_calm_requests_apart() -> None:
    records = [
        ok(5.0),
        ok(11.0),
        ok(12.0, "h3"),
        RequestRecord(10.5, 10.6, "refused", "", 503),  # failed before the first byte
        RequestRecord(9.0, 10.2, "error_event", "h1", 200),  # in flight when the kill struck
        RequestRecord(10.1, 11.0, "error_event", "h1", 200),
        RequestRecord(11.0, 12.0, "cut", "h1", 200),
        RequestRecord(13.0, 73.0, "hung", "h1", 200),
    ]
    rows = {r.fault: r for r in tally(records, [KILL], [], recovery_timeout_s=60)}
    kill, calm, total = rows["kill-engine"], rows[CALM], rows["total"]
    assert (kill.sent, kill.succeeded, kill.refused, kill.error_event, kill.cut, kill.hung) == (7, 2, 1, 2, 1, 1)
    assert (calm.sent, calm.succeeded, calm.error_event) == (1, 1, 0)
    assert (total.sent, total.succeeded, total.refused, total.error_event, total.cut, total.hung) == (8, 3, 1, 2, 1, 1)
    assert kill.host == "h1" and kill.recovery == "4.0 s" and calm.recovery == ""
    assert kill.slowest_s == 60.0 and calm.slowest_s == 3.0  # the hung one; a stream a stopped host froze shows so


def test_rows_come_in_fault_order_then_calm_then_total_and_a_lost_host_says_so() -> None:
    rows = tally([ok(61.0), ok(100.0)], [KILL, LOST], [], recovery_timeout_s=60)
    assert [r.fault for r in rows] == ["kill-engine", "kill-agent", CALM, "total"]
    assert rows[1].recovery == "not within 60 s" and rows[1].sent == 2  # the window lasts until it was repaired
    assert rows[2].sent == 0


def retries(*samples: tuple[float, float], router_pid: int = 7) -> list[RetrySample]:
    return [RetrySample(at, router_pid, value) for at, value in samples]


def test_retried_is_the_retry_counters_increase_over_the_window() -> None:
    samples = retries((8.5, 0.0), (9.5, 1.0), (10.5, 2.0), (12.0, 5.0), (13.5, 6.0), (20.0, 11.0))
    rows = {r.fault: r for r in tally([ok(11.0), ok(15.0)], [KILL], samples, recovery_timeout_s=60)}
    assert rows["kill-engine"].retried == 5  # from 1 (the last sample before the kill) to 6
    assert rows[CALM].retried == 1 + 5  # 0 -> 1 before it, 6 -> 11 after it
    assert rows["total"].retried == 11


def test_a_router_restart_counts_each_routers_retries_from_its_own_start() -> None:
    restart = FaultWindow("restart-router", "", start=10.0, end=12.0, until=13.0, recovery_s=1.0)
    old = retries((9.0, 4.0), (11.0, 5.0), (11.6, 6.0), router_pid=1)
    new = retries((11.3, 2.0), (12.5, 3.0), (20.0, 4.0), router_pid=2)  # both answer /metrics, in turn
    samples = sorted([*old, *new], key=lambda s: s.at)
    rows = tally([ok(11.0)], [restart], samples, recovery_timeout_s=60)
    assert rows[0].host == "router"
    assert rows[0].retried == 2 + 3  # the old router's 4 -> 6, the new one's 0 (its start) -> 3
    assert rows[1].retried == 4 + 1  # the old router's first 4 before, the new one's 3 -> 4 after


def test_a_window_no_router_answered_in_shows_no_retry_count() -> None:
    samples = retries((9.0, 5.0), (20.0, 8.0))  # the router was silent from 10 to 14
    rows = tally([ok(11.0)], [KILL], samples, recovery_timeout_s=60)
    assert rows[0].retried is None
    assert rows[1].retried == 5 + 3 and rows[2].retried == 8  # 5 -> 8 counted once the router answered again


def test_retries_are_read_from_the_routers_exposition_summed_over_models() -> None:
    metrics = RouterMetrics()
    assert retries_total(metrics.exposition()) == 0  # no retry yet: no sample line at all
    metrics.retries.labels("sim-model").inc(3)
    metrics.retries.labels("other model").inc()
    metrics.decisions.labels("least_loaded").inc(40)
    assert retries_total(metrics.exposition()) == 4  # neither orchard_retries_created nor other counters


def test_a_counter_that_drops_restarted_from_zero() -> None:
    samples = [(0.0, 10.0), (1.0, 12.0), (2.0, 3.0), (3.0, 7.0)]
    assert counter_increase(samples, 0.5, 10.0) == 2 + 3 + 4
    assert counter_increase(samples, 0.0, 1.5) == 2  # measured from the last sample before the start
    assert counter_increase(samples, 5.0, 9.0) == 0
    assert counter_increase([], 0.0, 9.0) == 0


def test_a_host_serves_again_when_ready_with_a_closed_breaker_and_not_draining() -> None:
    three = [row("h1"), row("h2"), row("h3")]
    assert healthy(three, "h2", hosts=3) and healthy(three, "", hosts=3)
    assert not healthy([row("h1"), row("h2", breaker="half-open"), row("h3")], "h2", hosts=3)
    assert not healthy([row("h1"), row("h2", draining=True), row("h3")], "h2", hosts=3)
    assert not healthy([row("h1"), row("h2", ready=False), row("h3")], "h2", hosts=3)
    assert healthy([row("h1"), row("h2", ready=False), row("h3")], "h1", hosts=3)
    assert not healthy([row("h1"), row("h2")], "", hosts=3)  # the router: every one of the three
    assert not healthy([], "h1", hosts=3)


def test_the_agent_is_the_process_running_worker_agent_never_its_keeper() -> None:
    agent = ["/venv/bin/python", "-m", "worker.agent", "--listen", "10.213.7.11:50051"]
    keeper = ["/venv/bin/python", "-m", "worker.keeper", "--name", "agent", "--", *agent]
    assert runs_module(agent, "worker.agent")
    assert not runs_module(keeper, "worker.agent")
    assert runs_module(keeper, "worker.keeper")
    assert runs_module(["/usr/bin/python3", "-u", "-X", "dev", "-m", "worker.agent"], "worker.agent")
    assert not runs_module(["/usr/bin/python3", "-c", "import x", "-m", "worker.agent"], "worker.agent")
    assert not runs_module(["/usr/bin/python3", "script.py", "-m", "worker.agent"], "worker.agent")
    assert not runs_module(["/usr/bin/python3", "-m", "worker.engines.programs.sim"], "worker.agent")
    assert not runs_module([], "worker.agent")


def test_the_recovery_shows_when_the_router_listed_it_ready_then_when_it_served() -> None:
    ready_first = FaultWindow("kill-engine", "h1", start=10.0, end=10.0, until=18.8, recovery_s=8.8, ready_s=3.2)
    row = tally([], [ready_first], [], recovery_timeout_s=60)[0]
    assert row.recovery == "3.2 s · 8.8 s"
