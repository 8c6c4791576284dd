"""Agents and routers as child processes of this one: start them from their typed configs, wait until their
workers are ready, stop them. `cluster up` (local), the benchmarks and the tests all launch through this.

Ready means what the router reports in /orchard/workers: every expected worker's engine produced a real token.
A child that exits, or an engine that reaches its terminal FAILED state, ends the wait with the log's tail.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import ValidationError

from cluster.router.rows import WorkerRow, WorkersReply
from worker.shared import procs
from worker.shared.launch import AgentConfig, RouterConfig
from worker.shared.states import EngineState

Report = Callable[[str], None]


class FleetError(Exception):
    """A child exited or never became ready; the message says which and ends with its log's last lines."""


@dataclass(frozen=True)
class Child:
    name: str  # "agent", "agent-w1", "router", ...
    pid: int
    log: Path


@dataclass
class Fleet:
    """Children spawned in their own sessions with logs under `logs`. tied_to_parent: they get SIGTERM when
    this process dies (Linux), so a crashed launcher leaves nothing behind; a detached `cluster up` unties.
    A child's pid is its keeper's when `keep`: stopping it (its group) stops both."""

    logs: Path
    tied_to_parent: bool = True
    keep: bool = False  # run each child under worker.keeper, which starts it again if it dies
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)

    def start_agent(self, config: AgentConfig, name: str = "agent") -> Child:
        return self.spawn(name, config.command())

    def start_router(self, config: RouterConfig, name: str = "router") -> Child:
        return self.spawn(name, config.command())

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        """Any command line as one of the fleet's children (`env` on top of the fleet's)."""
        log = self.logs / f"{name}.log"
        argv = procs.kept(name, argv) if self.keep else argv
        pid = procs.spawn(argv, log, tied_to_parent=self.tied_to_parent, env={**self.env, **(env or {})})
        child = Child(name, pid, log)
        self.children.append(child)
        return child

    def stop(self, child: Child | None = None, grace_s: float = 20.0) -> None:
        """Stop one child, or every child (routers first, so no request reaches a stopping agent)."""
        targets = [child] if child else sorted(self.children, key=lambda c: not c.name.startswith("router"))
        for target in targets:
            procs.terminate_tree(target.pid, grace_s)
            if target in self.children:
                self.children.remove(target)

    def check_alive(self) -> None:
        for child in self.children:
            if not procs.alive(child.pid):
                raise FleetError(f"the {child.name} exited; last lines of {child.log}:\n{procs.tail(child.log)}")

    def wait_ready(
        self,
        url: str,
        workers: int,
        timeout_s: float,
        report: Report | None = None,
        headers: dict[str, str] | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> list[WorkerRow]:
        """Poll the router at `url` until `workers` workers are ready; their rows. Raises FleetError.
        `headers`: an operator key, where the router asks for one; `verify`: what to trust on HTTPS."""
        deadline = time.monotonic() + timeout_s
        last = ""
        with httpx.Client(timeout=2.0, headers=headers, verify=verify) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                rows = fetch_workers(client, url)
                if len(rows) >= workers and all(row.ready for row in rows):
                    return rows
                # Engine states only: "unreachable" while an agent is still starting is expected, not news.
                starting = [row for row in rows if not row.ready and isinstance(row.state, EngineState)]
                progress = "; ".join(f"{row.worker_id}: {row.state_text}" for row in starting)
                if report and progress and progress != last:
                    report(progress)
                    last = progress
                if failed := [row for row in rows if row.state is EngineState.FAILED]:
                    raise FleetError(
                        f"worker {failed[0].worker_id}: the engine failed to start: {failed[0].detail}"
                        + self._engine_log_tail()
                    )
                time.sleep(0.25)
        raise FleetError(f"not ready within {timeout_s:.0f}s; see the logs in {self.logs}")

    def _engine_log_tail(self) -> str:
        """The engine log written last: the failed engine's, which just gave up."""
        logs = sorted(self.logs.rglob("engine.log"), key=lambda p: p.stat().st_mtime)
        return f"\nlast lines of {logs[-1]}:\n{procs.tail(logs[-1])}" if logs else ""


def read_reply(client: httpx.Client, url: str) -> WorkersReply:
    """The router's /orchard/workers: its workers and on-demand models. Raises httpx.HTTPError or ValidationError."""
    response = client.get(url + "/orchard/workers")
    response.raise_for_status()
    return WorkersReply.model_validate_json(response.content)


def read_workers(client: httpx.Client, url: str) -> list[WorkerRow]:
    return read_reply(client, url).workers


def fetch_workers(client: httpx.Client, url: str) -> list[WorkerRow]:
    """The rows, or [] while the router does not answer (yet): for loops that wait."""
    try:
        return read_workers(client, url)
    except (httpx.HTTPError, ValidationError):
        return []
