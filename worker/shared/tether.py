"""`python -m worker.shared.tether --parent PID -- ARGV…`: run ARGV so that it dies with the process that started it.

Every engine, child agent and locally started agent or router is started through it, with CPython's own spawn
(no Python runs between fork and exec; vfork on Linux, fork on macOS). A `preexec_fn`, or asyncio's spawn under uvloop
(libuv's fork), runs code in the child of a process that has gRPC's threads, which can hang before exec, and the
parent's event loop waits for that exec: an agent that stops answering.

- Linux: the tether, still one thread, asks the kernel to SIGTERM it when its parent dies (PR_SET_PDEATHSIG),
  then becomes ARGV (exec): no extra process, and ARGV's pid is the one the starter holds.
- macOS has nothing like PR_SET_PDEATHSIG, so an agent killed there (kill -9, a crash) would leave its engine
  holding most of the Mac's unified memory. There the tether stays between the two, in ARGV's process group:
  it starts ARGV, passes SIGTERM/SIGINT on, exits with ARGV's status, and when its parent is gone (re-parented to
  launchd) it ends the whole group: SIGTERM, a grace period, then SIGKILL. Only what macOS has: os.getppid,
  os.killpg, no /proc. `--watch` chooses this on Linux too (its tests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

POLL_S = 0.5
GRACE_S = 10.0
PR_SET_PDEATHSIG = 1


def wrap(argv: Sequence[str], python: str = sys.executable, watch: bool | None = None) -> list[str]:
    """The command line that runs argv tethered to the caller (named by pid: it may die before we look).
    watch: stay as a watching process (None: only where the kernel cannot tie ARGV to us, i.e. not on Linux)."""
    watching = ["--watch"] if watch else []
    return [python, "-m", "worker.shared.tether", "--parent", str(os.getpid()), *watching, "--", *argv]


def become(argv: list[str], parent: int) -> int:
    """Linux: SIGTERM when the parent dies, then exec argv (returns only if it cannot start)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the kernel was asked: start nothing
        return 1
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"tether: cannot start {argv[0]}: {exc}", file=sys.stderr)
    return 127


def run(argv: list[str], parent: int, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> int:
    """macOS (and --watch): start argv, pass signals on, end the group when the parent is gone."""
    if os.getppid() != parent:  # the agent died while we started: start nothing
        return 1
    child = subprocess.Popen(argv)  # same process group as the tether: the group is the engine's
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    while True:
        try:
            return _status(child.wait(timeout=poll_s))
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:  # the agent is gone: nothing may outlive it
            return _end_group(child, grace_s)


def _end_group(child: subprocess.Popen[bytes], grace_s: float) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group signal below is for the others
    group = os.getpgid(0)
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(group, signal.SIGKILL)  # ends the tether too
    return 1


def _status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


def main() -> None:
    argv = sys.argv[1:]
    parent = os.getppid()
    if argv[:1] == ["--parent"] and len(argv) > 1 and argv[1].isdigit():
        parent, argv = int(argv[1]), argv[2:]
    watch = argv[:1] == ["--watch"]
    argv = argv[1:] if watch else argv
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit("usage: python -m worker.shared.tether [--parent PID] [--watch] -- COMMAND [ARG…]")
    if sys.platform.startswith("linux") and not watch:
        sys.exit(become(argv, parent))
    sys.exit(run(argv, parent))


if __name__ == "__main__":
    main()
