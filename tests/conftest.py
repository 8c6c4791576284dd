"""Shared fixtures: real router and agent processes on loopback, started once per session."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.bringup.fleet import Fleet, fetch_workers
from cluster.router.rows import WorkerRow
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.shared import procs, tls
from worker.shared.launch import AgentConfig, RouterConfig
from worker.shared.procs import free_port

REPO = Path(__file__).resolve().parent.parent
SIM_MODEL = "sim-model"


def pytest_configure(config: pytest.Config) -> None:
    """macOS's temp folder (/private/var/folders/…/T/pytest-of-USER/…) leaves too little of a unix socket path's
    104 bytes for a test's router.sock: tests there get a short base folder."""
    if sys.platform == "darwin" and config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="op", dir="/tmp")


def usage_rows(home: Path) -> list[sqlite3.Row]:
    """The gateway's usage rows under an ORCHARD_HOME (or a router's gateway_db folder), oldest first."""
    with sqlite3.connect(home / "gateway.db") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM usage ORDER BY id").fetchall()


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def workers(url: str, admin_key: str | None = None) -> list[WorkerRow]:
    """The router's /orchard/workers rows, typed ([] while it does not answer)."""
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
    with httpx.Client(timeout=5, headers=headers) as client:
        return fetch_workers(client, url)


def agent_info(address: str, tls_dir: Path | None = None) -> pb.InfoReply:
    """An agent's Info; `tls_dir`: the identity to call it with (a `cluster up` cluster's router's)."""
    with tls.blocking_channel(address, tls_dir) as channel:
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
    """Router + agents (a Fleet) on loopback; `agents[0]` is the one most tests talk to."""

    fleet: Fleet
    router: RouterConfig
    agents: tuple[AgentConfig, ...]

    @property
    def url(self) -> str:
        return self.router.local_url

    @property
    def agent_address(self) -> str:
        return self.agents[0].listen

    @property
    def model(self) -> str:
        return self.agents[0].served_name

    @property
    def log_dir(self) -> Path:
        return self.fleet.logs

    @property
    def agent_pid(self) -> int:
        return next(c.pid for c in self.fleet.children if c.name.startswith("agent"))

    def engine_url(self) -> str:
        return agent_info(self.agent_address, self.router.tls_path).engine_url

    def engine_pid(self) -> int:
        children = procs.descendants(self.agent_pid)
        if not children:
            raise RuntimeError("the agent has no engine process")
        return children[0]


def start_cluster(tmp: Path, agents: list[AgentConfig], **router: Any) -> Cluster:
    """Start the agents and a router over them; wait until every worker is ready (a real token)."""
    fleet = Fleet(tmp / "logs")
    config = RouterConfig(listen=f"127.0.0.1:{free_port()}", workers=tuple(a.listen for a in agents), **router)
    cluster = Cluster(fleet, config, tuple(agents))
    try:
        for index, agent in enumerate(agents):
            fleet.start_agent(agent, name="agent" if len(agents) == 1 else f"agent-{index}")
        fleet.start_router(config)
        slow = any(a.engine != "sim" for a in agents)
        fleet.wait_ready(config.local_url, len(agents), timeout_s=900 if slow else 60)
    except BaseException as exc:
        log = procs.tail(fleet.logs / "agent.log", 40) if (fleet.logs / "agent.log").exists() else ""
        fleet.stop()
        raise AssertionError(f"cluster did not come up: {exc}\n{log}") from None
    return cluster


def agent_config(engine: str, model: str, logs: Path, served: str = "", **fields: Any) -> AgentConfig:
    """An agent on a free loopback port (tests' common case)."""
    return AgentConfig(
        listen=f"127.0.0.1:{free_port()}",
        engine=engine,
        model=model,
        served_name=served or model,
        log_dir=str(logs),
        **fields,
    )


def stop_cluster(cluster: Cluster) -> None:
    cluster.fleet.stop()


@pytest.fixture(scope="session")
def sim_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Router + agent + sim engine (decode 2 ms/token) for behaviour that does not need real text."""
    tmp = tmp_path_factory.mktemp("sim-cluster")
    options = (("decode-ms-per-token", "2"), ("seed", "7"))  # context length: learned
    cluster = start_cluster(tmp, [agent_config("sim", SIM_MODEL, tmp / "logs", sim_options=options)])
    yield cluster
    stop_cluster(cluster)


def run_cli(args: list[str], home: Path, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCHARD_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], env=env, capture_output=True, text=True, timeout=timeout_s
    )
