"""Shared fixtures: real router and agent processes on loopback, started once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from cluster import procs
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.supervisor import free_port

REPO = Path(__file__).resolve().parent.parent
SIM_MODEL = "sim-model"


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def router_ready(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def agent_info(address: str) -> pb.InfoReply:
    with grpc.insecure_channel(address) as channel:
        reply: pb.InfoReply = pb_grpc.WorkerStub(channel).Info(pb.InfoRequest(), timeout=5)
        return reply


def engine_metric(engine_url: str, name: str) -> float:
    """Sum of one metric's samples on the engine's /metrics (e.g. vllm:num_requests_running)."""
    text = httpx.get(engine_url + "/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Cluster:
    url: str
    agent_address: str
    agent_pid: int
    router_pid: int
    log_dir: Path
    model: str

    def engine_url(self) -> str:
        return agent_info(self.agent_address).engine_url

    def engine_pid(self) -> int:
        children = procs.descendants(self.agent_pid)
        if not children:
            raise RuntimeError("the agent has no engine process")
        return children[0]


def start_cluster(tmp: Path, engine: str, model: str, served: str, extra_agent_args: list[str]) -> Cluster:
    agent_port, router_port = free_port(), free_port()
    address = f"127.0.0.1:{agent_port}"
    logs = tmp / "logs"
    agent = [sys.executable, "-m", "worker.agent", "--listen", address, "--engine", engine, "--model", model,
             "--served-name", served, "--log-dir", str(logs), *extra_agent_args]  # fmt: skip
    router = [sys.executable, "-m", "cluster.router", "--listen", f"127.0.0.1:{router_port}", "--worker", address]
    agent_pid = procs.spawn(agent, logs / "agent.log", tied_to_parent=True)
    router_pid = procs.spawn(router, logs / "router.log", tied_to_parent=True)
    cluster = Cluster(f"http://127.0.0.1:{router_port}", address, agent_pid, router_pid, logs, served)
    try:
        wait_until(lambda: router_ready(cluster.url), 60 if engine == "sim" else 900, f"{engine} cluster")
    except TimeoutError:
        stop_cluster(cluster)
        raise AssertionError("cluster did not come up:\n" + procs.tail(logs / "agent.log", 40)) from None
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    for pid in (cluster.router_pid, cluster.agent_pid):
        procs.terminate_tree(pid, grace_s=20)


@pytest.fixture(scope="session")
def sim_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Router + agent + sim engine (decode 2 ms/token) for behaviour that does not need real text."""
    tmp = tmp_path_factory.mktemp("sim-cluster")
    options = ["--sim-option", "decode-ms-per-token=2", "--sim-option", "seed=7"]  # context length: learned
    cluster = start_cluster(tmp, "sim", SIM_MODEL, SIM_MODEL, options)
    yield cluster
    stop_cluster(cluster)


def run_cli(args: list[str], home: Path, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCHARD_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], env=env, capture_output=True, text=True, timeout=timeout_s
    )
