"""Routing through a real router and two sim agents: prefix affinity and session pins, by response header."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest

from cluster import procs
from tests.conftest import SIM_MODEL, free_port, router_ready, wait_until

SYSTEM = "You are the orchard's pruning expert; answer with care and cite the season. " * 30


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("routing") / "logs"
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    pids = []
    for index, address in enumerate(addresses):
        argv = [sys.executable, "-m", "worker.agent", "--listen", address, "--engine", "sim", "--model", SIM_MODEL,
                "--worker-id", f"w{index}", "--log-dir", str(logs / f"w{index}")]  # fmt: skip
        pids.append(procs.spawn(argv, logs / f"agent{index}.log", tied_to_parent=True))
    port = free_port()
    router = [
        sys.executable,
        "-m",
        "cluster.router",
        "--listen",
        f"127.0.0.1:{port}",
        "--policy",
        "round_robin",
        "--model-policy",
        f"{SIM_MODEL}=prefix",
    ]  # fmt: skip  (the per-model override must win)
    for address in addresses:
        router += ["--worker", address]
    pids.append(procs.spawn(router, logs / "router.log", tied_to_parent=True))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: router_ready(url), 60, "router")
    wait_until(
        lambda: all(w["state"] == "ready" for w in httpx.get(url + "/orchard/workers").json()["workers"]), 60, "2 ready"
    )
    yield url
    for pid in pids:
        procs.terminate_tree(pid)


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
