"""The agent daemon's own bookkeeping, as a real process on this machine (sim engine)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from tests.conftest import free_port
from worker.shared import procs
from worker.shared.daemon import AgentStatus, StartReply, StopReply
from worker.shared.launch import AgentConfig

R = TypeVar("R", bound=BaseModel)


def daemon(reply: type[R], *args: str) -> R:
    """Run `python -m worker.daemon ARGS` as the head does over SSH and read its one typed line."""
    out = subprocess.run([sys.executable, "-m", "worker.daemon", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return reply.model_validate_json(out.stdout.strip().splitlines()[-1])


def test_start_is_idempotent_for_the_same_hash_and_restarts_on_a_new_one(tmp_path: Path) -> None:
    folder = str(tmp_path / "orchard")
    agent = AgentConfig(listen=f"127.0.0.1:{free_port()}", engine="sim", model="m").to_argv()
    first = daemon(StartReply, "start", "--dir", folder, "--hash", "aaa", "--", *agent)
    try:
        assert first.status == "started" and (tmp_path / "orchard" / "agent.pid").exists()
        assert (tmp_path / "orchard" / "logs" / "agent.log").exists()  # the daemon's own log folder, not ~
        same = daemon(StartReply, "start", "--dir", folder, "--hash", "aaa", "--", *agent)
        assert same.pid == first.pid and same.changed is False
        other = daemon(StartReply, "start", "--dir", folder, "--hash", "bbb", "--", *agent)
        assert other.pid != first.pid and other.changed is True
        time.sleep(0.2)
        assert not procs.alive(first.pid)
        assert daemon(AgentStatus, "status", "--dir", folder).status == "running"
    finally:
        stopped = daemon(StopReply, "stop", "--dir", folder)
    assert stopped.was_running is True
    assert daemon(AgentStatus, "status", "--dir", folder).status == "stopped"
    assert daemon(StopReply, "stop", "--dir", folder).was_running is False


def test_start_refuses_bad_agent_arguments_before_starting_anything(tmp_path: Path) -> None:
    folder = tmp_path / "orchard"
    argv = [sys.executable, "-m", "worker.daemon", "start", "--dir", str(folder), "--", "--engine", "sim"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--model" in out.stderr
    assert not (folder / "agent.pid").exists()


def test_an_agent_run_by_a_service_is_recorded_so_reruns_keep_it_and_no_second_one_starts(tmp_path: Path) -> None:
    """What launchd or systemd runs (`daemon run`): the same pid becomes the agent, with its hash on record."""
    folder = tmp_path / "orchard"
    agent = AgentConfig(listen=f"127.0.0.1:{free_port()}", engine="sim", model="m").to_argv()
    argv = [
        sys.executable,
        "-m",
        "worker.daemon",
        "run",
        "--dir",
        str(folder),
        "--hash",
        "aaa",
        "--service",
        "launchd",
        "--",
        *agent,
    ]
    service = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # as launchd would
    try:
        deadline = time.monotonic() + 30
        while daemon(AgentStatus, "status", "--dir", str(folder)).status != "running":
            assert time.monotonic() < deadline and service.poll() is None, "the service's agent did not start"
            time.sleep(0.2)
        running = daemon(AgentStatus, "status", "--dir", str(folder))
        assert running.pid == service.pid and running.hash == "aaa" and running.service == "launchd"
        kept = daemon(StartReply, "start", "--dir", str(folder), "--hash", "aaa", "--", *agent)
        assert kept.status == "running" and kept.pid == service.pid and kept.changed is False
        other = daemon(StartReply, "start", "--dir", str(folder), "--hash", "bbb", "--", *agent)
        assert other.status == "failed" and "launchd service" in other.log and service.poll() is None
    finally:
        service.terminate()
        service.wait(30)
    down = daemon(AgentStatus, "status", "--dir", str(folder))  # crashed, or launchd waiting to start it again
    assert down.status == "stopped" and down.service == "launchd"
    refused = daemon(StartReply, "start", "--dir", str(folder), "--hash", "aaa", "--", *agent)
    assert refused.status == "failed" and refused.pid is None  # no agent beside the service's
    assert daemon(AgentStatus, "status", "--dir", str(folder)).status == "stopped"
