"""`cluster down` stops only processes it can prove are its own: the recorded pid, started at the recorded time,
running the recorded program."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from cluster.bringup import local
from worker.shared import procs


def _sleeper(*extra: str) -> subprocess.Popen[bytes]:
    """A child whose command line names `extra`, once it has exec'd (before, it still shows the parent's)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *extra])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and extra and not set(extra) <= set(_cmdline(child.pid)):
        time.sleep(0.01)
    return child


def _cmdline(pid: int) -> list[str]:
    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.Error:
        return []


def test_a_process_is_ours_only_with_its_start_time_and_program() -> None:
    child = _sleeper("cluster.router")
    try:
        started = procs.started_at(child.pid)
        assert started is not None
        assert procs.ours(child.pid, started, "cluster.router")
        assert procs.ours(child.pid, None, "cluster.router")  # an older record without a time: the program decides
        assert not procs.ours(child.pid, started - 5, "cluster.router")  # the pid was reused by a later process
        assert not procs.ours(child.pid, started, "worker.agent")  # another program
    finally:
        child.kill()
        child.wait()
    assert not procs.ours(child.pid, started, "cluster.router")


def test_down_leaves_alone_a_process_that_reused_a_recorded_pid(tmp_path: Path) -> None:
    stranger = _sleeper("cluster.router")  # someone else's process now holds the router's recorded pid
    try:
        state = local.LocalState(
            url="http://127.0.0.1:1",
            model="m",
            engine="sim",
            router_pid=stranger.pid,
            agent_pid=stranger.pid,
            agent_address="127.0.0.1:2",
            supervisor_pid=None,
            log_dir=str(tmp_path),
            started={stranger.pid: (procs.started_at(stranger.pid) or 0) - 100},
        )
        local.records.write(local.state_path(tmp_path), state)
        assert local.stop(tmp_path, grace_s=1) == []
        time.sleep(0.2)
        assert stranger.poll() is None  # still running
        assert not local.state_path(tmp_path).exists()  # the stale record is gone
    finally:
        stranger.kill()
        stranger.wait()


def test_secret_flags_are_redacted_in_either_form_and_nothing_else() -> None:
    argv = [
        "vllm",
        "--api-key",
        "sk-1",
        "--engine-arg=--api-key=sk-2",
        "--hf-token=abc",
        "--ssl-keyfile",
        "/k.pem",
        "--max-tokens",
        "5",
        "--model",
        "m",
    ]
    assert procs.redacted(argv) == [
        "vllm",
        "--api-key",
        "***",
        "--engine-arg=--api-key=***",
        "--hf-token=***",
        "--ssl-keyfile",
        "/k.pem",
        "--max-tokens",
        "5",
        "--model",
        "m",
    ]


def test_logs_are_created_and_kept_private(tmp_path: Path) -> None:
    import os
    import stat

    existing = tmp_path / "logs" / "old.log"
    existing.parent.mkdir()
    existing.write_text("before\n")
    os.chmod(existing, 0o644)
    for path in (existing, tmp_path / "logs" / "new.log"):
        with procs.open_log(path) as log:
            log.write(b"line\n")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert existing.read_text() == "before\nline\n"
