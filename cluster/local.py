"""The embedded default cluster: router + one worker agent on this machine, serving the bundled model.

`cluster up` with no file runs this. In the foreground it supervises both children and stops them on Ctrl-C
or `cluster down`; with --detach it leaves them running and records their pids in ~/.orchard/local.json.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cluster import procs, records
from cluster.models import BUNDLED_NAME, ModelError, prepare_bundled, resolve
from worker.supervisor import free_port


class LocalClusterError(Exception):
    """Bring-up failed; the message says why and where the logs are. Nothing is left running."""


def orchard_home() -> Path:
    return Path(os.environ.get("ORCHARD_HOME") or Path.home() / ".orchard")


@dataclass(frozen=True)
class LocalClusterConfig:
    engine: str = "vllm"
    model: str = BUNDLED_NAME
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int = 4096
    kv_cache_gib: float = 1.0
    ready_timeout_s: float = 900.0
    sim_options: tuple[str, ...] = ()
    engine_args: tuple[str, ...] = ()
    home: Path = Path("~/.orchard")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class LocalState:
    url: str
    model: str
    engine: str
    router_pid: int
    agent_pid: int
    agent_address: str
    supervisor_pid: int | None  # the foreground `cluster up`, if any
    log_dir: str

    def pids(self) -> list[int]:
        return [p for p in (self.supervisor_pid, self.router_pid, self.agent_pid) if p]


def state_path(home: Path) -> Path:
    return home / "local.json"


def read_state(home: Path) -> LocalState | None:
    return records.read(state_path(home), LocalState)


def running_state(home: Path) -> LocalState | None:
    """The recorded cluster if its router and agent still run; a stale record is removed."""
    state = read_state(home)
    if state is None:
        return None
    if procs.alive(state.router_pid) and procs.alive(state.agent_pid):
        return state
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


Report = Callable[[str], None]


def start(config: LocalClusterConfig, *, detached: bool, report: Report) -> LocalState:
    """Start agent and router, wait until a real token came through, record the state. Raises
    LocalClusterError (after stopping what it started) on any failure."""
    home = config.home
    logs = home / "logs"
    if not _port_free(config.host, config.port):
        raise LocalClusterError(f"port {config.port} on {config.host} is in use; choose another with --port")
    served_name = config.model if config.model != "bundled" else BUNDLED_NAME
    if config.engine in ("vllm", "mlx") and config.model in (BUNDLED_NAME, "bundled"):
        prepare_bundled(progress=report)
    try:  # the agent resolves the bundled name itself; other sources are checked here, early
        if config.engine != "sim":
            resolve(config.model)
    except ModelError as exc:
        raise LocalClusterError(str(exc)) from exc
    agent_port = free_port()
    agent_address = f"127.0.0.1:{agent_port}"
    agent_argv = [
        sys.executable, "-m", "worker.agent", "--listen", agent_address, "--engine", config.engine,
        "--model", config.model, "--served-name", served_name, "--log-dir", str(logs),
        "--max-model-len", str(config.max_model_len), "--kv-cache-gib", str(config.kv_cache_gib),
        "--ready-timeout", str(config.ready_timeout_s),
    ]  # fmt: skip
    for option in config.sim_options:
        agent_argv += ["--sim-option", option]
    for arg in config.engine_args:
        agent_argv.append(f"--engine-arg={arg}")
    router_argv = [sys.executable, "-m", "cluster.router", "--listen", f"{config.host}:{config.port}",
                   "--worker", agent_address]  # fmt: skip
    report(f"starting worker agent ({config.engine} engine, model {served_name})")
    agent_pid = procs.spawn(agent_argv, logs / "agent.log", tied_to_parent=not detached)
    report(f"starting router on {config.url}")
    router_pid = procs.spawn(router_argv, logs / "router.log", tied_to_parent=not detached)
    state = LocalState(
        url=config.url, model=served_name, engine=config.engine, router_pid=router_pid, agent_pid=agent_pid,
        agent_address=agent_address, supervisor_pid=None if detached else os.getpid(), log_dir=str(logs),
    )  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    records.write(state_path(home), state)
    try:
        _wait_ready(state, config.ready_timeout_s, report)
    except BaseException:
        stop(home)
        raise
    return state


def _wait_ready(state: LocalState, timeout_s: float, report: Report) -> None:
    deadline = time.monotonic() + timeout_s
    logs = Path(state.log_dir)
    last_detail = ""
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            for pid, name in ((state.agent_pid, "agent"), (state.router_pid, "router")):
                if not procs.alive(pid):
                    log = logs / f"{name}.log"
                    raise LocalClusterError(f"the {name} exited during start-up; last lines of {log}:\n"
                                            + procs.tail(log))  # fmt: skip
            detail = _worker_detail(client, state.url)
            if detail == "ready":
                return
            if detail and detail != last_detail:
                report(f"worker: {detail}")
                last_detail = detail
            if detail.startswith("failed"):
                raise LocalClusterError(f"the engine failed to start; see {logs / 'engine.log'}:\n"
                                        + procs.tail(logs / "engine.log"))  # fmt: skip
            time.sleep(0.5)
    raise LocalClusterError(f"not ready within {timeout_s:.0f}s; see the logs in {logs}")


def _worker_detail(client: httpx.Client, url: str) -> str:
    try:
        rows = client.get(url + "/orchard/workers").json()["workers"]
    except (httpx.HTTPError, ValueError, KeyError):
        return ""
    if not rows:
        return ""
    row = rows[0]
    state = str(row.get("state", ""))
    return state if state == "ready" or not row.get("detail") else f"{state} ({row['detail']})"


def stop(home: Path, grace_s: float = 30.0) -> list[int]:
    """Stop everything the recorded local cluster started; idempotent. Returns the pids that were running."""
    state = read_state(home)
    if state is None:
        return []
    was_running = [pid for pid in state.pids() if procs.alive(pid)]
    if state.supervisor_pid and state.supervisor_pid != os.getpid() and procs.alive(state.supervisor_pid):
        os.kill(state.supervisor_pid, signal.SIGTERM)  # the foreground `cluster up` cleans up itself
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and procs.alive(state.supervisor_pid):
            time.sleep(0.1)
    for pid in (state.router_pid, state.agent_pid):
        procs.terminate_tree(pid, grace_s)
    state_path(home).unlink(missing_ok=True)
    return was_running


def ask(url: str, model: str, question: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """One greedy chat request through the router; returns the OpenAI response body."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_tokens": 64}  # fmt: skip
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout_s)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result
