"""Routing through a real router and two sim agents: prefix affinity and session pins, by response header."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import SIM_MODEL, agent_config, start_cluster, stop_cluster

SYSTEM = "You are the orchard's pruning expert; answer with care and cite the season. " * 30


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("routing") / "logs"
    agents = [agent_config("sim", SIM_MODEL, logs / f"w{i}", worker_id=f"w{i}") for i in range(2)]
    # round robin by default; the per-model override must win
    cluster = start_cluster(logs.parent, agents, policy="round_robin", model_policies=((SIM_MODEL, "prefix"),))
    yield cluster.url
    stop_cluster(cluster)


def served_by(url: str, body: dict[str, object], headers: dict[str, str] | None = None) -> str:
    response = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["x-orchard-worker"]


def chat(system: str, question: str, **extra: object) -> dict[str, object]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return {"model": SIM_MODEL, "messages": messages, "max_tokens": 2, **extra}


def test_requests_sharing_a_long_prefix_stay_on_one_worker(two_workers: str) -> None:
    first = served_by(two_workers, chat(SYSTEM, "When do I prune apples?"))
    for question in ("And pears?", "What about plums?", "Cherries?", "Quinces?"):
        assert served_by(two_workers, chat(SYSTEM, question)) == first
    text = httpx.get(two_workers + "/metrics", timeout=10).text
    assert 'orchard_routing_decisions_total{reason="prefix_hit"}' in text


def test_a_session_keeps_its_worker(two_workers: str) -> None:
    first = served_by(two_workers, chat("short", "hi"), {"x-session-id": "alice"})
    for _ in range(4):
        assert served_by(two_workers, chat("short", "again"), {"x-session-id": "alice"}) == first


def test_concurrent_misses_spread_over_both_workers(two_workers: str) -> None:
    """No shared prefix, no session: the cost rule counts requests in flight, so overlapping ones spread."""
    with httpx.Client(timeout=60) as client:
        bodies = [{**chat("short", f"q{i}"), "max_tokens": 60, "stream": True} for i in range(4)]
        streams = [client.stream("POST", two_workers + "/v1/chat/completions", json=body) for body in bodies]
        responses = [s.__enter__() for s in streams]
        seen = {r.headers["x-orchard-worker"] for r in responses}
        for stream, response in zip(streams, responses, strict=True):
            response.read()
            stream.__exit__(None, None, None)
    assert seen == {"w0", "w1"}
