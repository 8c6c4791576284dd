"""The chaos benchmark's arithmetic, on made-up requests: which fault a request belongs to, what each row counts,
how the retry estimate reads the router's counter, and which process is the agent."""

from __future__ import annotations

from cluster.bench.chaos import CALM, FaultWindow, RequestRecord, counter_increase, healthy, tally, window_of
from cluster.bench.netlab import runs_module
from cluster.router.rows import Reachability, WorkerRow
from proto.states import EngineState

KILL = FaultWindow("kill-engine", "h1", start=10.0, end=10.0, until=14.0, recovery_s=4.0)
STOP = FaultWindow("stop-agent", "h3", start=30.0, end=50.0, until=52.5, recovery_s=2.5)
LOST = FaultWindow("kill-agent", "h2", start=60.0, end=60.0, until=140.0, recovery_s=None, note="repaired")


def ok(started: float, worker: str = "h2") -> RequestRecord:
    return RequestRecord(started, started + 3, "ok", worker, 200)


def row(worker: str, *, ready: bool = True, breaker: str = "closed", draining: bool = False) -> WorkerRow:
    state = EngineState.READY if ready else Reachability.UNREACHABLE
    return WorkerRow(address=f"{worker}:50051", worker_id=worker, state=state, models=["sim-model"], breaker=breaker,
                     draining=draining)  # fmt: skip


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
        ok(5.0), ok(11.0), ok(12.0, "h3"),
        RequestRecord(10.5, 10.6, "refused", "", 503),  # failed before the first byte
        RequestRecord(9.0, 10.2, "error_event", "h1", 200),  # in flight when the kill struck
        RequestRecord(10.1, 11.0, "error_event", "h1", 200),
        RequestRecord(11.0, 12.0, "cut", "h1", 200),
        RequestRecord(13.0, 73.0, "hung", "h1", 200),
    ]  # fmt: skip
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


def test_router_restart_row_names_the_router_and_has_no_retry_estimate() -> None:
    restart = FaultWindow("restart-router", "", start=10.0, end=12.0, until=13.0, recovery_s=1.0)
    rows = tally([ok(11.0)], [restart], [(9.0, 100.0), (12.5, 5.0)], recovery_timeout_s=60)
    assert rows[0].host == "router" and rows[0].retried is None


def test_retries_are_decisions_beyond_one_per_answered_request_started_meanwhile() -> None:
    struck = RequestRecord(9.0, 10.5, "error_event", "h1", 200)  # routed before the window: its decision too
    records = [struck, ok(11.0, "h2"), ok(11.5, "h3"), ok(12.0, "h2"), RequestRecord(12.5, 12.6, "refused", "", 503)]
    decisions = [(8.5, 99.0), (9.5, 100.0), (10.5, 101.0), (12.0, 104.0), (13.5, 105.0), (20.0, 110.0)]
    rows = {r.fault: r for r in tally(records, [KILL], decisions, recovery_timeout_s=60)}
    assert rows["kill-engine"].retried == 2  # 5 decisions in the window, 3 requests started then answered
    assert rows[CALM].retried == 5  # 6 decisions outside it, one for the struck request
    assert rows["total"].retried == 7


def test_the_estimate_is_never_negative() -> None:
    rows = tally([ok(11.0), ok(12.0)], [KILL], [(9.0, 50.0), (13.0, 51.0)], recovery_timeout_s=60)
    assert rows[0].retried == 0


def test_a_counter_that_drops_restarted_from_zero() -> None:
    samples = [(0.0, 10.0), (1.0, 12.0), (2.0, 3.0), (3.0, 7.0)]
    assert counter_increase(samples, 0.5, 10.0) == 2 + 3 + 4
    assert counter_increase(samples, 0.0, 1.5) == 2  # measured from the last sample before the start
    assert counter_increase(samples, 5.0, 9.0) == 0
    assert counter_increase([], 0.0, 9.0) == 0


def test_a_host_serves_again_when_ready_with_a_closed_breaker_and_not_draining() -> None:
    three = [row("h1"), row("h2"), row("h3")]
    assert healthy(three, "h2") and healthy(three, "")
    assert not healthy([row("h1"), row("h2", breaker="half-open"), row("h3")], "h2")
    assert not healthy([row("h1"), row("h2", draining=True), row("h3")], "h2")
    assert not healthy([row("h1"), row("h2", ready=False), row("h3")], "h2")
    assert healthy([row("h1"), row("h2", ready=False), row("h3")], "h1")
    assert not healthy([row("h1"), row("h2")], "")  # the router: every one of the three
    assert not healthy([], "h1")


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
