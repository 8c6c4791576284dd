"""The embedded default cluster: router + one worker agent on this machine, serving the bundled model.

`cluster up` with no file runs this. In the foreground it supervises both children and stops them on Ctrl-C
or `cluster down`; with --detach it leaves them running and records their pids in ~/.orchard/local.json.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from cluster.bringup import certs
from cluster.bringup.fleet import Fleet, FleetError, Report
from cluster.gateway.gateway import refuse_open
from cluster.gateway.keys import operator_headers
from cluster.gateway.store import db_path
from cluster.pki import authority
from cluster.state import records
from worker.shared import procs
from worker.shared.launch import (
    AGENT_MODULE,
    ROUTER_MODULE,
    STALL_TIMEOUT_S,
    AgentConfig,
    EngineKind,
    LaunchConfigError,
    RouterConfig,
    Task,
    is_loopback,
)
from worker.shared.models import BUNDLED_NAME, ModelError, is_bundled, prepare_bundled, resolve
from worker.shared.procs import free_port

CLI_PROGRAMS = ("cluster", "cluster.cli")  # a foreground `cluster up`: the script, or python -m cluster.cli


class LocalClusterError(Exception):
    """Bring-up failed; the message says why and where the logs are. Nothing is left running."""


def orchard_home() -> Path:
    return Path(os.environ.get("ORCHARD_HOME") or Path.home() / ".orchard")


@dataclass(frozen=True)
class LocalClusterConfig:
    engine: EngineKind = "vllm"
    model: str = BUNDLED_NAME
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int = 4096
    kv_cache_gib: float = 1.0
    ready_timeout_s: float = 900.0
    stall_timeout_s: float = STALL_TIMEOUT_S
    sim_options: tuple[tuple[str, str], ...] = ()
    engine_args: tuple[str, ...] = ()
    home: Path = Path("~/.orchard")
    tls: bool = False  # HTTPS on the endpoint, with a certificate from the cluster CA
    task: Task = "generate"  # embed: serve /v1/embeddings (vLLM's pooling runner)
    plaintext_agents: bool = False  # benchmarks only: router ↔ agent without mutual TLS, to measure what it costs


class LocalState(BaseModel):
    """What a local `cluster up` started (~/.orchard/local.json)."""

    model_config = ConfigDict(frozen=True)

    url: str
    model: str
    engine: str
    router_pid: int
    agent_pid: int
    agent_address: str
    supervisor_pid: int | None  # the foreground `cluster up`, if any
    log_dir: str
    started: dict[int, float] = {}  # pid → its start time: `down` stops only these very processes

    def pids(self) -> list[int]:
        return [p for p in (self.supervisor_pid, self.router_pid, self.agent_pid) if p]

    def ours(self, pid: int | None) -> bool:
        """Still the process this record started (not a reused pid)."""
        programs = {self.router_pid: (ROUTER_MODULE,), self.agent_pid: (AGENT_MODULE,)}.get(pid or 0, CLI_PROGRAMS)
        return pid is not None and procs.ours(pid, self.started.get(pid), *programs)


def state_path(home: Path) -> Path:
    return home / "local.json"


def read_state(home: Path) -> LocalState | None:
    return records.read(state_path(home), LocalState)


def running_state(home: Path) -> LocalState | None:
    """The recorded cluster if its router and agent still run; a record whose processes are gone is removed. A
    record whose pids run something else (reused, or not exec'd yet) is neither trusted nor acted on."""
    state = read_state(home)
    if state is None:
        return None
    if state.ours(state.router_pid) and state.ours(state.agent_pid):
        return state
    if not (procs.alive(state.router_pid) or procs.alive(state.agent_pid)):
        stop(home)
    return None


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start(config: LocalClusterConfig, *, detached: bool, report: Report) -> LocalState:
    """Start agent and router, wait until a real token came through, record the state. Raises
    LocalClusterError (after stopping what it started) on any failure."""
    home = config.home
    if why := refuse_open(f"{config.host}:{config.port}", is_loopback(config.host), False, db_path(home)):
        raise LocalClusterError(why)
    if not _port_free(config.host, config.port):
        raise LocalClusterError(f"port {config.port} on {config.host} is in use; choose another with --port")
    if config.engine in ("vllm", "mlx") and is_bundled(config.model):
        prepare_bundled(progress=report)
    try:  # the agent resolves the bundled name itself; other sources are checked here, early
        if config.engine != "sim":
            resolve(config.model)
    except ModelError as exc:
        raise LocalClusterError(str(exc)) from exc
    try:
        agent, router = launch_configs(config)
        certs.local_identities(home)
        if config.tls:
            certs.endpoint_identity(home, (config.host,))
    except (LaunchConfigError, authority.AuthorityError) as exc:
        raise LocalClusterError(str(exc)) from None
    fleet = Fleet(home / "logs", tied_to_parent=not detached, keep=True)
    report(f"starting worker agent ({config.engine} engine, model {agent.served_name})")
    agent_child = fleet.start_agent(agent)
    report(f"starting router on {router.local_url}")
    router_child = fleet.start_router(router)
    state = LocalState(
        url=router.local_url,
        model=agent.served_name,
        engine=config.engine,
        router_pid=router_child.pid,
        agent_pid=agent_child.pid,
        agent_address=agent.listen,
        supervisor_pid=None if detached else os.getpid(),
        log_dir=str(fleet.logs),
        started={pid: t for pid in (router_child.pid, agent_child.pid, os.getpid()) if (t := procs.started_at(pid))},
    )
    records.write(state_path(home), state)
    try:
        fleet.wait_ready(
            router.local_url,
            workers=1,
            timeout_s=config.ready_timeout_s,
            report=report,
            headers=operator_headers(home),
            verify=authority.trust(home),
        )
    except FleetError as exc:
        stop(home)
        raise LocalClusterError(str(exc)) from None
    except BaseException:
        stop(home)
        raise
    return state


def launch_configs(config: LocalClusterConfig) -> tuple[AgentConfig, RouterConfig]:
    """The agent's and the router's configuration for this local cluster (pure, but for a free port)."""
    served = BUNDLED_NAME if is_bundled(config.model) else config.model
    agent = AgentConfig.checked(
        listen=f"127.0.0.1:{free_port()}",
        engine=config.engine,
        model=config.model,
        served_name=served,
        log_dir=str(config.home / "logs"),
        max_model_len=config.max_model_len,
        kv_cache_gib=config.kv_cache_gib,
        ready_timeout_s=config.ready_timeout_s,
        stall_timeout_s=config.stall_timeout_s,
        sim_options=config.sim_options,
        engine_args=config.engine_args,
        tls_dir=None if config.plaintext_agents else str(authority.tls_folder(config.home, certs.LOCAL_AGENT)),
        task=config.task,
    )
    endpoint = str(certs.endpoint_path(config.home)) if config.tls else None
    router = RouterConfig.checked(
        listen=f"{config.host}:{config.port}",
        workers=(agent.listen,),
        models=(served,),
        gateway_db=str(db_path(config.home)),
        tls_dir=None if config.plaintext_agents else str(router_tls(config.home)),
        tls_cert=endpoint,
        tls_key=endpoint,
    )
    return agent, router


def router_tls(home: Path) -> Path:
    """The router's identity towards the local agent (benchmarks call the agent with it too)."""
    return authority.tls_folder(home, certs.ROUTER)


def stop(home: Path, grace_s: float = 30.0) -> list[int]:
    """Stop everything the recorded local cluster started; idempotent. Returns the pids that were running."""
    state = read_state(home)
    if state is None:
        return []
    was_running = [pid for pid in state.pids() if state.ours(pid)]
    if state.supervisor_pid and state.supervisor_pid != os.getpid() and state.ours(state.supervisor_pid):
        os.kill(state.supervisor_pid, signal.SIGTERM)  # the foreground `cluster up` cleans up itself
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and procs.alive(state.supervisor_pid):
            time.sleep(0.1)
    for pid in (state.router_pid, state.agent_pid):
        if state.ours(pid):  # a pid reused by another process since is not ours to stop
            procs.terminate_tree(pid, grace_s)
    state_path(home).unlink(missing_ok=True)
    return was_running


def ask(url: str, model: str, question: str, home: Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """One greedy chat request through the router (with the operator's key); returns the OpenAI body."""
    headers = operator_headers(home)
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 64}
    response = httpx.post(
        url + "/v1/chat/completions", json=body, headers=headers, timeout=timeout_s, verify=authority.trust(home)
    )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result
