"""Failover with real processes: a router over two sim agents, one of which hangs (SIGSTOP, as a Mac that
sleeps or a process that stops answering) and comes back; one that dies and is restarted."""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from cluster.bringup import local, rollout
from tests.conftest import (
    SIM_MODEL,
    Cluster,
    agent_config,
    agent_info,
    engine_metric,
    free_port,
    run_cli,
    start_cluster,
    stop_cluster,
    wait_until,
)
from tests.conftest import workers as rows
from worker.shared import procs

ACCEPT_S = 1.0


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Cluster]:
    options = (("decode-ms-per-token", "2"),)
    agents = [agent_config("sim", SIM_MODEL, tmp_path / f"logs-{i}", sim_options=options) for i in range(2)]
    cluster = start_cluster(tmp_path, agents, policy="round_robin", accept_timeout_s=ACCEPT_S)
    yield cluster
    for child in cluster.fleet.children:
        os.kill(child.pid, signal.SIGCONT)  # a stopped process cannot take its SIGTERM
    stop_cluster(cluster)


def _ask(cluster: Cluster, stream: bool) -> str:
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    if stream:
        return "".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(**body, stream=True) if c.choices
        )
    return client.chat.completions.create(**body).choices[0].message.content or ""


def _row(cluster: Cluster, address: str) -> dict[str, object]:
    return next(r.model_dump(mode="json") for r in rows(cluster.url) if r.address == address)


def test_a_hung_worker_is_passed_over_its_breaker_opens_then_closes_when_it_answers(pair: Cluster) -> None:
    hung = pair.agents[1].listen
    agent = next(c for c in pair.fleet.children if c.name == "agent-1")
    os.kill(agent.pid, signal.SIGSTOP)
    answers, took = [], []
    for i in range(8):  # round robin sends every other request to the hung worker until its breaker opens
        started = time.monotonic()
        answers.append(_ask(pair, stream=i % 2 == 0))
        took.append(time.monotonic() - started)
    assert all(answers), answers  # none failed: each that met the hung worker was retried on the other
    row = _row(pair, hung)
    assert row["breaker"] == "open" and row["state"] == "suspect"
    assert engine_metric(pair.url, 'orchard_worker_breaker_state{worker="' + str(row["worker_id"]) + '"}') == 2
    assert engine_metric(pair.url, f'orchard_retries_total{{model="{SIM_MODEL}"}}') == 2  # the two that met it
    assert max(took) < ACCEPT_S + 1 and sorted(took)[-3] < ACCEPT_S  # two met it (then open): the rest did not
    os.kill(agent.pid, signal.SIGCONT)
    served = int(str(_row(pair, hung)["served"]))

    def probed_and_closed() -> bool:
        assert _ask(pair, stream=False)
        row = _row(pair, hung)
        return row["breaker"] == "closed" and int(str(row["served"])) > served

    wait_until(probed_and_closed, 15, "the breaker's half-open probe to close it")


def test_a_restarted_agent_is_used_within_2_s_of_its_readiness(pair: Cluster) -> None:
    dead = pair.agents[1]
    child = next(c for c in pair.fleet.children if c.name == "agent-1")
    pair.fleet.stop(child)
    wait_until(lambda: _row(pair, dead.listen)["state"] == "unreachable", 15, "the router to see it gone")
    time.sleep(3)  # long enough for a backing-off reconnect loop to be at its longest interval
    pair.fleet.start_agent(dead, name="agent-1")
    wait_until(lambda: _engine_healthy(dead.listen), 60, "the restarted agent's engine")
    ready_at = time.monotonic()
    wait_until(lambda: _row(pair, dead.listen)["state"] == "ready", 10, "the router to use it again")
    print(f"\nrouter saw the restarted agent ready {time.monotonic() - ready_at:.2f} s after its engine")
    assert time.monotonic() - ready_at < 2.0


def _engine_healthy(address: str) -> bool:
    """The agent's own readiness, asked directly: its engine answers /health."""
    try:
        url = agent_info(address).engine_url
        return bool(url) and httpx.get(url + "/health", timeout=2).status_code == 200
    except Exception:  # not up yet: gRPC or HTTP refuses
        return False


def test_an_engine_that_stops_advancing_is_restarted_and_its_stream_ends_with_an_error(tmp_path: Path) -> None:
    """The engine answers /health but its requests stop advancing (a collective waiting on a lost peer): with
    streams in flight and no token for --stall-timeout, the agent restarts it; no stream hangs."""
    options = (("decode-ms-per-token", "2"), ("hang-after-tokens", "5"))
    agent = agent_config("sim", SIM_MODEL, tmp_path / "logs", sim_options=options, stall_timeout_s=2.0)
    cluster = start_cluster(tmp_path, [agent])
    try:
        engine = cluster.engine_pid()
        body = {"model": SIM_MODEL, "prompt": "story", "max_tokens": 50, "stream": True}
        started = time.monotonic()
        with httpx.stream("POST", cluster.url + "/v1/completions", json=body, timeout=60) as response:
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        took = time.monotonic() - started
        assert events[-1] == "data: [DONE]" and '"error"' in events[-2], events[-3:]  # an error event, not a cut
        assert len(events) >= 5 and took < 2.0 + 2.0 + 2.0 + 2  # stall timeout, a health tick, the hung grace, slack
        wait_until(
            lambda: [pid for pid in procs.descendants(cluster.agent_pid)[:1] if pid != engine],
            30,
            "a new engine process",
        )
        assert "engine hung" in (cluster.log_dir / "agent.log").read_text()
        wait_until(lambda: _row_ready(cluster), 30, "the restarted engine to be ready")
        whole = {"model": SIM_MODEL, "prompt": "story", "max_tokens": 50}  # hangs the same way, not streamed
        started = time.monotonic()
        answer = httpx.post(cluster.url + "/v1/completions", json=whole, timeout=60)
        took = time.monotonic() - started
        print(f"\nhung whole answer: HTTP {answer.status_code} after {took:.1f} s")
        assert answer.status_code in (502, 503) and "error" in answer.json() and took < 2.0 + 2.0 + 2.0 + 2
    finally:
        stop_cluster(cluster)


def _row_ready(cluster: Cluster) -> bool:
    return all(row.ready for row in rows(cluster.url))


def test_a_slow_whole_answer_that_advances_is_not_taken_for_a_hung_engine(tmp_path: Path) -> None:
    """No token is relayed until a whole answer ends, but the engine's generated-token counter moves."""
    options = (("decode-ms-per-token", "40"),)
    agent = agent_config("sim", SIM_MODEL, tmp_path / "logs", sim_options=options, stall_timeout_s=1.0)
    cluster = start_cluster(tmp_path, [agent])
    try:
        whole = {"model": SIM_MODEL, "prompt": "story", "max_tokens": 100}  # ~4 s: four stall timeouts
        answer = httpx.post(cluster.url + "/v1/completions", json=whole, timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 100
        assert "engine hung" not in (cluster.log_dir / "agent.log").read_text()
    finally:
        stop_cluster(cluster)


def _answers(url: str) -> bool:
    return _answer(url) == "200"


def _answer(url: str) -> str:
    """A whole chat answer through the router, on a new connection (the kernel picks among routers on the port):
    its status, or the error that stopped it."""
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    try:
        return str(httpx.post(url + "/v1/chat/completions", json=body, timeout=10).status_code)
    except httpx.HTTPError as exc:
        return repr(exc)


def _kept_child(keeper_pid: int) -> int:
    """The process a keeper runs (its one direct child)."""
    return wait_until(lambda: next(iter(psutil.Process(keeper_pid).children()), None), 10, "the kept child").pid


def test_a_killed_agent_and_a_killed_router_come_back_within_10_s(tmp_path: Path) -> None:
    """kill -9 on a detached local cluster's agent, then its router: each keeper starts its child again."""
    up = run_cli(
        ["up", "--engine", "sim", "--model", "sim-model", "--port", str(free_port()), "--detach"], tmp_path, 120
    )
    assert up.returncode == 0, up.stdout + up.stderr
    state = local.running_state(tmp_path)
    assert state is not None
    try:
        for which, keeper_pid in (("agent", state.agent_pid), ("router", state.router_pid)):
            victim = _kept_child(keeper_pid)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: _answers(state.url), 15, f"answers again after the {which} was killed")
            took = time.monotonic() - killed_at
            print(f"\n{which} killed: answering again after {took:.1f} s")
            assert took < 10 and _kept_child(keeper_pid) != victim
        assert "starting it again" in (tmp_path / "logs" / "agent.log").read_text()
    finally:
        run_cli(["down"], tmp_path, 60)
    assert not procs.alive(state.agent_pid) and not procs.alive(state.router_pid)  # a stop is not a crash


def test_a_planned_router_hand_over_refuses_nothing_and_lets_streams_finish(tmp_path: Path) -> None:
    options = (("decode-ms-per-token", "10"),)
    agent = agent_config("sim", SIM_MODEL, tmp_path / "logs-agent", sim_options=options)
    cluster = start_cluster(tmp_path, [agent], handover=str(tmp_path / "router.sock"))
    old = cluster.fleet.children[-1].pid  # the router
    engine = cluster.engine_pid()
    results: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            results.append(_answer(cluster.url))

    body = {"model": SIM_MODEL, "prompt": "a long one", "max_tokens": 400, "stream": True}
    new = 0
    try:
        with httpx.stream("POST", cluster.url + "/v1/completions", json=body, timeout=60) as long_stream:
            lines = long_stream.iter_lines()
            assert next(lines).startswith("data:")  # the old router is streaming it
            threads = [threading.Thread(target=hammer) for _ in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            said: list[str] = []
            new = rollout.hand_over(old, cluster.router, tmp_path, report=said.append)
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in "".join(rest).replace(" ", "")
        wait_until(lambda: not procs.alive(old), 10, "the old router to exit after its stream")
        print(f"\nhand-over: {results.count('200')} of {len(results)} requests answered; {said[-1]}")
        handed = float(said[-1].split(" in ")[1].split(" s")[0])
        assert handed < 10, said  # the new router saw the worker ready in seconds
        assert "took over the listening socket" in (tmp_path / "logs" / "router.log").read_text()
        assert results and set(results) == {"200"} and _answers(cluster.url), results
        assert cluster.engine_pid() == engine  # agents and engines ran on through the router's restart
    finally:
        stop.set()
        if new:
            procs.terminate_tree(new, 5)
        stop_cluster(cluster)


def _kept_alive_load(url: str, stop: threading.Event, tally: collections.Counter[str], clients: int) -> None:
    """`clients` callers on one keep-alive pool (as an SDK keeps its connections), half streaming, each request
    counted by how it ended: `200`, another status, or the error that stopped it."""
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(base_url=url, timeout=30, limits=limits) as client:

        def one(stream: bool) -> str:
            try:
                if not stream:
                    return str(client.post("/v1/chat/completions", json=body).status_code)
                with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                    lines = [line for line in response.iter_lines() if line]
                ok = response.status_code == 200 and lines[-1] == "data: [DONE]" and "error" not in lines[-2]
                return "200" if ok else f"{response.status_code} {lines[-2:]}"
            except httpx.HTTPError as exc:
                return repr(exc)

        def caller(index: int) -> None:
            while not stop.is_set():
                tally[one(index % 2 == 0)] += 1

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


@pytest.mark.slow
def test_hand_overs_in_a_row_under_keep_alive_load_lose_nothing(tmp_path: Path) -> None:
    """48 callers reuse kept-alive connections (and open new ones) through 10 hand-overs: an old router closes a
    connection only at a request boundary, saying so (`Connection: close`), so not one request fails."""
    options = (("decode-ms-per-token", "1"), ("overhead-ms", "5"))
    agent = agent_config("sim", SIM_MODEL, tmp_path / "logs-agent", sim_options=options)
    cluster = start_cluster(tmp_path, [agent], handover=str(tmp_path / "router.sock"))
    router = cluster.fleet.children[-1].pid
    tally: collections.Counter[str] = collections.Counter()
    stop = threading.Event()
    load = threading.Thread(target=_kept_alive_load, args=(cluster.url, stop, tally, 48))
    routers = [router]
    try:
        load.start()
        for _ in range(10):
            time.sleep(0.5)
            routers.append(rollout.hand_over(routers[-1], cluster.router, tmp_path, report=lambda line: None))
        time.sleep(0.5)
        stop.set()
        load.join()
        print(f"\n10 hand-overs under keep-alive load: {dict(tally)}")
        assert tally["200"] > 200 and set(tally) == {"200"}, dict(tally)
        wait_until(lambda: not any(procs.alive(pid) for pid in routers[:-1]), 20, "the old routers to exit")
    finally:
        stop.set()
        for pid in routers[1:]:
            procs.terminate_tree(pid, 5)
        stop_cluster(cluster)


def test_heartbeats_carry_a_long_silent_wait_and_a_stopped_agent_ends_its_stream_within_the_gap(
    tmp_path: Path,
) -> None:
    """The gap deadline (1 s here) never cuts an engine that is slow to start (2.5 s to the first token: the
    agent's heartbeats cover it), and ends a stream whose agent stops (SIGSTOP) with an error event."""
    options = (("overhead-ms", "2500"), ("decode-ms-per-token", "50"))
    agent = agent_config("sim", SIM_MODEL, tmp_path / "logs", sim_options=options)
    cluster = start_cluster(tmp_path, [agent], gap_timeout_s=1.0)
    try:
        whole = {"model": SIM_MODEL, "prompt": "slow to start", "max_tokens": 4}
        assert httpx.post(cluster.url + "/v1/completions", json=whole, timeout=30).status_code == 200
        body = {**whole, "max_tokens": 200, "stream": True}
        with httpx.stream("POST", cluster.url + "/v1/completions", json=body, timeout=30) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            events = [next(lines)]
            os.kill(cluster.agent_pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            events += list(lines)
        took = time.monotonic() - stopped_at
        print(f"\nstopped agent: its stream ended with an error event {took:.1f} s later")
        assert events[-1] == "data: [DONE]" and "stopped answering" in events[-2] and took < 4, events[-3:]
    finally:
        os.kill(cluster.agent_pid, signal.SIGCONT)
        stop_cluster(cluster)


def test_a_worker_that_goes_silent_before_the_first_byte_is_passed_over(tmp_path: Path) -> None:
    """It accepted the request (and sent a heartbeat), then its host stopped: past the gap deadline the router
    sends the request to the other replica; the client sees only a slower answer."""
    options = (("overhead-ms", "2000"),)
    agents = [agent_config("sim", SIM_MODEL, tmp_path / f"logs-{i}", sim_options=options) for i in range(2)]
    cluster = start_cluster(tmp_path, agents, gap_timeout_s=1.0)
    stopped = 0
    try:
        whole = {"model": SIM_MODEL, "prompt": "long prefill", "max_tokens": 4}
        answers: list[httpx.Response] = []
        asking = threading.Thread(
            target=lambda: answers.append(httpx.post(cluster.url + "/v1/completions", json=whole, timeout=30))
        )
        asking.start()
        busy = wait_until(lambda: next((r for r in rows(cluster.url) if r.inflight), None), 5, "the request placed")
        index = [a.listen for a in agents].index(busy.address)
        stopped = next(c.pid for c in cluster.fleet.children if c.name == f"agent-{index}")
        os.kill(stopped, signal.SIGSTOP)
        asking.join(timeout=30)
        assert answers and answers[0].status_code == 200, answers
        assert answers[0].headers["x-orchard-worker"] != busy.worker_id
        assert engine_metric(cluster.url, f'orchard_retries_total{{model="{SIM_MODEL}"}}') == 1
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        stop_cluster(cluster)
