"""Models that follow demand, end to end on sim engines (real router, real agents, real child agents over gRPC):
a cold request is answered; 32 concurrent cold requests start one load; a model with no room evicts the least
recently used idle one (never a pinned one); keep_alive unloads; a model too big is refused naming the memory it
needs; a sustained queue gains a replica and a quiet one loses it."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from cluster.bench.demand import sim_child
from cluster.bringup.fleet import Fleet
from cluster.placement import offers
from cluster.placement.offers import DemandCatalog, HostRoom, Offered, Scaling
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from tests.conftest import agent_config, wait_until
from worker.shared.launch import AgentConfig, RouterConfig
from worker.shared.procs import free_port

GB = 10**9


@dataclass
class Lab:
    url: str
    agents: dict[str, AgentConfig]
    logs: Path

    def children(self, host: str) -> list[str]:
        stub = pb_grpc.WorkerStub(grpc.insecure_channel(self.agents[host].listen))
        return sorted(c.model for c in stub.Info(pb.InfoRequest(), timeout=5).children)

    def everywhere(self) -> dict[str, list[str]]:
        return {host: self.children(host) for host in self.agents}

    def ask(self, model: str, tokens: int = 4, timeout: float = 60) -> httpx.Response:
        body = {"model": model, "prompt": "hello", "max_tokens": tokens}
        return httpx.post(self.url + "/v1/completions", json=body, timeout=timeout)


def offered(
    logs: Path,
    name: str,
    need_gb: float,
    keep_alive_s: float = 300.0,
    max_replicas: int = 1,
    decode_ms: int = 1,
    slots: int = 64,
) -> Offered:
    places = tuple(sim_child(logs, name, host, decode_ms, slots) for host in ("h1", "h2"))
    return Offered(
        name=name,
        engine="sim",
        source=name,
        need_bytes=int(need_gb * GB),
        keep_alive_s=keep_alive_s,
        max_replicas=max_replicas,
        places=places,
    )


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Two hosts of 10 GB usable, each with a pinned 2 GB model: room for one 6 GB on-demand engine each."""
    logs = tmp_path / "logs"
    fleet = Fleet(logs)
    agents = {h: agent_config("sim", f"pinned-{h}", logs / h, worker_id=h, need_gb=2.0) for h in ("h1", "h2")}
    models = request.param(logs) if hasattr(request, "param") else default_models(logs)
    catalog = DemandCatalog(
        hosts=tuple(
            HostRoom(label=h, agent=a.listen, usable_bytes=10 * GB, pinned_bytes=2 * GB, pinned_model=f"pinned-{h}")
            for h, a in agents.items()
        ),
        models=models,
        scaling=Scaling(up_queue=2, up_after_s=2.0, down_after_s=3.0),
    )
    offers.write(tmp_path / "demand.json", catalog)
    router = RouterConfig(
        listen=f"127.0.0.1:{free_port()}",
        workers=tuple(a.listen for a in agents.values()),
        demand=str(tmp_path / "demand.json"),
    )
    try:
        for host, agent in agents.items():
            fleet.start_agent(agent, name=f"agent-{host}")
        fleet.start_router(router)
        fleet.wait_ready(router.local_url, 2, timeout_s=60)
        yield Lab(router.local_url, agents, logs)
    finally:
        fleet.stop()


def default_models(logs: Path) -> tuple[Offered, ...]:
    return (
        offered(logs, "coder", 6),
        offered(logs, "chat", 6),
        offered(logs, "third", 6),
        offered(logs, "big", 50),
        offered(logs, "brief", 6, keep_alive_s=2.0),
    )


def test_a_cold_request_is_answered_and_the_models_list_every_offer(lab: Lab) -> None:
    listed = {m["id"] for m in httpx.get(lab.url + "/v1/models", timeout=10).json()["data"]}
    assert {"coder", "chat", "third", "big", "brief", "pinned-h1", "pinned-h2"} <= listed
    answer = lab.ask("coder")
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 4
    assert sum(len(c) for c in lab.everywhere().values()) == 1


def test_32_concurrent_cold_requests_start_one_load(lab: Lab) -> None:
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: lab.ask("chat"), range(32)))
    assert [a.status_code for a in answers] == [200] * 32
    assert lab.everywhere() in ({"h1": ["chat"], "h2": []}, {"h1": [], "h2": ["chat"]})
    metrics = httpx.get(lab.url + "/metrics", timeout=10).text
    assert 'orchard_cold_start_wait_seconds_count{model="chat"} 32.0' in metrics


def test_no_room_evicts_the_least_recently_used_idle_model_never_a_pinned_one(lab: Lab) -> None:
    assert lab.ask("coder").status_code == 200
    assert lab.ask("chat").status_code == 200
    held = lab.everywhere()
    assert sorted(held.values()) == [["chat"], ["coder"]]  # one per host: each holds one 6 GB engine
    time.sleep(0.5)
    assert lab.ask("chat").status_code == 200  # chat used last: coder is the least recently used
    assert lab.ask("third").status_code == 200
    coder_host = next(h for h, models in held.items() if models == ["coder"])
    assert lab.children(coder_host) == ["third"]
    for host in ("h1", "h2"):  # the pinned models were never touched
        assert lab.ask(f"pinned-{host}").status_code == 200


def test_a_model_too_big_is_refused_naming_the_memory_it_needs(lab: Lab) -> None:
    refused = lab.ask("big")
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "model_does_not_fit"
    assert error["message"] == "model 'big' needs 50 GB; the largest host it may load on holds 10 GB"


def test_an_idle_model_unloads_after_its_keep_alive(lab: Lab) -> None:
    assert lab.ask("brief").status_code == 200
    assert sum(c == ["brief"] for c in lab.everywhere().values()) == 1
    wait_until(lambda: not any(lab.everywhere().values()), 15, "brief unloaded after its 2 s keep_alive")
    assert lab.ask("brief").status_code == 200  # and loads again when asked


def scaling_models(logs: Path) -> tuple[Offered, ...]:
    return (offered(logs, "busy", 4, max_replicas=2, decode_ms=40, slots=2),)


@pytest.mark.parametrize("lab", [scaling_models], indirect=True)
def test_a_sustained_queue_gains_a_replica_and_a_quiet_one_loses_it(lab: Lab) -> None:
    assert lab.ask("busy").status_code == 200
    with concurrent.futures.ThreadPoolExecutor(12) as pool:  # 2 slots, 12 callers for ~8 s: a long queue
        deadline = time.monotonic() + 8
        list(
            pool.map(
                lambda _: [lab.ask("busy", tokens=20) for _ in iter(lambda: time.monotonic() < deadline, False)],
                range(12),
            )
        )
    assert sorted(lab.everywhere().values()) == [["busy"], ["busy"]]
    wait_until(lambda: sorted(lab.everywhere().values()) in ([[], ["busy"]],), 20, "back to one replica when quiet")
