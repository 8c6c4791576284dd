"""Our own child processes, for the agent (engines) and the head (agents, routers): start in a new session with
logs to a file, tie to the parent's life, check alive, terminate-then-kill a tree, pick a free port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil


def die_with_parent() -> None:
    """Run in a child between fork and exec: on Linux the child gets SIGTERM when its parent dies
    (PR_SET_PDEATHSIG), so a killed parent never leaves an engine or agent behind. No-op elsewhere."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(
    argv: list[str], log_path: Path, *, tied_to_parent: bool, env: dict[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Start argv in a new session with stdout+stderr appended to log_path; returns its pid.

    tied_to_parent: the child gets SIGTERM if this process dies (Linux), so nothing is left behind.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            preexec_fn=die_with_parent if tied_to_parent else None,
            cwd=cwd,
        )
    return proc.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[int]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    return []


def terminate_tree(pid: int, grace_s: float = 20.0) -> None:
    """SIGTERM the process and its group, wait up to grace_s, then SIGKILL whatever is left (children too)."""
    if not alive(pid):
        _reap(pid)
        return
    tree = [pid, *descendants(pid)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        _reap(pid)
        time.sleep(0.1)
    for leftover in tree:
        if alive(leftover):
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
    _reap(pid)


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (a keeper and its child); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def record(path: Path, pid: int) -> None:
    """Note a process group we lead and who leads us (pids and start times), so that the next agent can end
    the group if we die first."""
    with contextlib.suppress(psutil.NoSuchProcess):
        path.parent.mkdir(parents=True, exist_ok=True)
        owner = os.getpid()
        path.write_text(json.dumps({"pid": pid, "started": psutil.Process(pid).create_time(),
                                    "owner": owner, "owner_started": psutil.Process(owner).create_time()}))  # fmt: skip


def reap_recorded(path: Path, grace_s: float = 10.0) -> int | None:
    """End the process group a dead agent recorded at `path`, if it still runs (the same process, not a reused
    pid), and forget the record; a group whose agent lives is left alone. Returns the pid that was ended.
    Where the OS cannot tie a child's life to its parent (macOS), this frees the Mac's memory from an engine
    whose agent was killed."""
    try:
        noted = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(noted, dict) or _same(noted.get("owner"), noted.get("owner_started")):
        return None  # its agent still runs (another agent on the same folder): not ours to end
    with contextlib.suppress(OSError):
        path.unlink()
    if not _same(noted.get("pid"), noted.get("started")):
        return None
    pid = int(noted["pid"])
    terminate_tree(pid, grace_s)
    return pid


def _same(pid: object, started: object) -> bool:
    """The process `pid` runs and is the one that started at `started` (not a reused pid)."""
    if not isinstance(pid, int) or not isinstance(started, int | float):
        return False
    try:
        return abs(psutil.Process(pid).create_time() - float(started)) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
