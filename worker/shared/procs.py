"""Our own child processes, for the agent (engines) and the head (agents, routers): start in a new session with
logs to a file, tie to the parent's life, check alive, terminate-then-kill a tree, pick a free port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, BinaryIO

import psutil

from worker.shared import tether


def kept(name: str, argv: list[str], python: str = sys.executable) -> list[str]:
    """The command line that keeps argv running: `python -m worker.keeper` starts it again when it dies."""
    return [python, "-m", "worker.keeper", "--name", name, "--", *argv]


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on: its affinity on Linux; every CPU where there is none (macOS)."""
    if sys.platform == "linux":
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(
    argv: list[str], log_path: Path, *, tied_to_parent: bool, env: dict[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Start argv in a new session with stdout+stderr appended to log_path; returns its pid.

    tied_to_parent: the child ends when this process dies (the tether), so nothing is left behind.
    """
    with open_log(log_path) as log_file:
        return start(argv, log_file, tied_to_parent=tied_to_parent, env=env, cwd=cwd).pid


def start(
    argv: Sequence[str],
    log: IO[bytes],
    *,
    tied_to_parent: bool = True,
    watch: bool | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv in its own session (a stop reaches its whole group) with stdout+stderr to log.

    CPython's spawn (no Python between fork and exec), never a preexec_fn nor asyncio's spawn: in a process with
    gRPC's threads, Python code between fork and exec can hang, and the caller's event loop with it (see tether).
    The tether ties the child to this process's life instead (watch: see tether.wrap). Await its end with `exited`.
    """
    return subprocess.Popen(
        tether.wrap(argv, watch=watch) if tied_to_parent else list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


async def exited(process: subprocess.Popen[bytes], poll_s: float = 0.1) -> int:
    """A started process's exit status, awaited without blocking the event loop (by polling: exits are rare)."""
    while (code := process.poll()) is None:  # noqa: ASYNC110 - a process outside asyncio: no event to await
        await asyncio.sleep(poll_s)
    return code


def open_log(path: Path) -> BinaryIO:
    """A log file to append to, readable by its owner only (a log may name hosts, models and paths a lab does not
    publish); an existing one is made so too."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


SECRET_WORDS = frozenset({"key", "token", "secret", "password", "passwd", "credential", "credentials", "apikey"})


def redacted(argv: Sequence[str]) -> list[str]:
    """A command line fit for a log: the value of any flag that names a secret (--api-key, --hf-token, …), in
    either form (`--flag value`, `--flag=value`, also inside --engine-arg=…), replaced by ***. A flag is secret
    when one of its words is (--max-tokens and --ssl-keyfile are not: a count and a path)."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append("***")
            hide_next = False
            continue
        flag, eq, _ = arg.rpartition("=") if arg.count("=") > 1 else arg.partition("=")
        if _secret_flag(flag):
            shown.append(f"{flag}=***" if eq else arg)
            hide_next = not eq
        else:
            shown.append(arg)
    return shown


def _secret_flag(flag: str) -> bool:
    name = flag.rpartition("--")[2].lower() if "--" in flag else ""
    return bool(SECRET_WORDS & set(name.replace("_", "-").split("-")))


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def started_at(pid: int) -> float | None:
    """When the process started (None: gone): with its pid, what tells it apart from a later one reusing the pid."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


START_TOLERANCE_S = 1.0  # Linux derives start times from the boot time, which moves when the clock is stepped


def ours(pid: int | None, started: float | None, *programs: str) -> bool:
    """Whether `pid` is still the process we started: it runs, started when we recorded (unchecked only for a
    record an older Orchard wrote without the time), and its command line runs one of `programs` (a module such
    as cluster.router, or a script's name). What fails this is left alone: a pid reused by someone else's process."""
    if not alive(pid):
        return False
    assert pid is not None
    try:
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - started) >= START_TOLERANCE_S:
            return False
        return any(arg in programs or arg.rpartition("/")[2] in programs for arg in process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
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
        path.write_text(
            json.dumps(
                {
                    "pid": pid,
                    "started": psutil.Process(pid).create_time(),
                    "owner": owner,
                    "owner_started": psutil.Process(owner).create_time(),
                }
            )
        )


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
