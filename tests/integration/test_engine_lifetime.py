"""An engine never outlives its agent: through the tether (on Linux the kernel's PR_SET_PDEATHSIG, on macOS a
watching process), and on any OS through the pid record the next agent reaps. Real processes; the darwin path
(`--watch`) runs here because it uses only what macOS has (getppid, killpg)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_until
from worker.engines.base import EngineConfig
from worker.engines.sim import SimEngine
from worker.shared import procs, tether
from worker.supervisor import EngineSupervisor, SupervisorPolicy

GONE = 2**22 + 7  # above Linux's largest pid (pid_max 4194304) and macOS's (99998): never a live process
# A stand-in agent: starts the tether in its own session (as the supervisor does), prints the pids, waits.
AGENT = """
import subprocess, sys, time
from worker.shared import tether
proc = subprocess.Popen(tether.wrap(["sleep", "300"], watch=True), start_new_session=True)
import psutil
deadline = time.monotonic() + 30
while not psutil.Process(proc.pid).children() and time.monotonic() < deadline:
    time.sleep(0.05)
print(proc.pid, *[c.pid for c in psutil.Process(proc.pid).children()], flush=True)
time.sleep(300)
"""
# The same on Linux, where the tether sets PR_SET_PDEATHSIG and becomes its command.
LINUX_AGENT = """
import subprocess, time
from worker.shared import tether
print(subprocess.Popen(tether.wrap(["sleep", "300"]), start_new_session=True).pid, flush=True)
time.sleep(300)
"""


def test_the_tether_ends_the_engine_when_its_agent_is_killed() -> None:
    agent = subprocess.Popen([sys.executable, "-c", AGENT], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        tether_pid, engine_pid = map(int, agent.stdout.readline().split())
        assert procs.alive(engine_pid) and "sleep" in psutil.Process(engine_pid).name()
        agent.kill()  # kill -9: no clean-up code runs in the agent
        agent.wait()
        wait_until(lambda: not procs.alive(engine_pid) and not procs.alive(tether_pid), 15, "engine and tether gone")
    finally:
        agent.kill()


def test_the_tether_passes_signals_on_and_returns_the_engines_status() -> None:
    done = subprocess.run(tether.wrap([sys.executable, "-c", "raise SystemExit(3)"], watch=True), timeout=60)
    assert done.returncode == 3
    running = subprocess.Popen(tether.wrap(["sleep", "300"], watch=True))
    [engine] = wait_until(lambda: psutil.Process(running.pid).children(), 30, "the tether's engine")
    running.send_signal(signal.SIGTERM)
    assert running.wait(timeout=30) == 128 + signal.SIGTERM
    wait_until(lambda: not procs.alive(engine.pid), 10, "the engine ended by the passed-on SIGTERM")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_on_linux_the_tether_becomes_the_engine_and_the_kernel_ends_it_with_its_agent() -> None:
    agent = subprocess.Popen([sys.executable, "-c", LINUX_AGENT], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        pid = int(agent.stdout.readline())
        wait_until(lambda: psutil.Process(pid).name() == "sleep", 30, "the tether became the engine (same pid)")
        assert psutil.Process(pid).children() == []  # no process in between
        agent.kill()  # kill -9: no clean-up code runs in the agent
        agent.wait()
        wait_until(lambda: not procs.alive(pid), 15, "the engine ended by the kernel")
    finally:
        agent.kill()


def test_a_tether_whose_parent_is_already_gone_starts_nothing() -> None:
    for watch in (False, True):
        argv = tether.wrap(["sleep", "300"], watch=watch)
        argv[argv.index("--parent") + 1] = str(GONE)
        assert subprocess.run(argv, timeout=60).returncode == 1


def test_an_engine_left_by_a_dead_agent_is_reaped_at_the_next_start(tmp_path: Path) -> None:
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    record = tmp_path / "engine.pid"
    procs.record(record, orphan.pid)  # recorded by this process, which lives: another agent leaves it alone
    assert procs.reap_recorded(record) is None and procs.alive(orphan.pid) and record.exists()
    noted = json.loads(record.read_text()) | {"owner": GONE, "owner_started": 1.0}  # now its agent is dead
    assert not procs.alive(GONE)
    record.write_text(json.dumps(noted))
    other = tmp_path / "other.pid"  # a record whose pid now belongs to another process: left alone
    other.write_text(json.dumps({"pid": os.getpid(), "started": 1.0, "owner": GONE, "owner_started": 1.0}))
    assert procs.reap_recorded(other) is None and procs.alive(os.getpid()) and not other.exists()
    assert procs.reap_recorded(record, grace_s=5) == orphan.pid
    orphan.wait(timeout=10)
    assert not record.exists() and procs.reap_recorded(record) is None


async def test_a_supervisor_on_macos_runs_its_engine_tethered(tmp_path: Path) -> None:
    policy = SupervisorPolicy(ready_timeout_s=60, stop_grace_s=5)
    supervisor = EngineSupervisor(SimEngine(), EngineConfig("sim", "m", "m"), tmp_path, policy, platform="darwin")
    await supervisor.start()
    try:
        for _ in range(600):
            if supervisor.ready:
                break
            await asyncio.sleep(0.1)
        assert supervisor.ready and supervisor.pid is not None
        tethered = ["-m", "worker.shared.tether", "--parent", str(os.getpid()), "--watch"]
        assert psutil.Process(supervisor.pid).cmdline()[1:6] == tethered
        assert (tmp_path / "engine.pid").exists()
        tree = [supervisor.pid, *procs.descendants(supervisor.pid)]
    finally:
        await supervisor.stop()
    assert not [p for p in tree if procs.alive(p)] and not (tmp_path / "engine.pid").exists()
