"""Failover with real processes: a router over two sim agents, one of which hangs (SIGSTOP, as a Mac that
sleeps or a process that stops answering) and comes back; one that dies and is restarted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import (
    SIM_MODEL,
    Cluster,
    agent_config,
    agent_info,
    engine_metric,
    start_cluster,
    stop_cluster,
    wait_until,
)
from tests.conftest import workers as rows
from worker import procs

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
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**body, stream=True)
                       if c.choices)  # fmt: skip
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
    assert engine_metric(pair.url, 'orchard_worker_breaker_state{worker="' + hung + '"}') == 2
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
        wait_until(lambda: [pid for pid in procs.descendants(cluster.agent_pid)[:1] if pid != engine], 30,
                   "a new engine process")  # fmt: skip
        assert "engine hung" in (cluster.log_dir / "agent.log").read_text()
    finally:
        stop_cluster(cluster)
