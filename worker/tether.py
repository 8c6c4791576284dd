"""`python -m worker.tether -- ARGV…`: run ARGV so that it dies with the process that started the tether.

Linux has PR_SET_PDEATHSIG for this; macOS has nothing like it, so an agent killed there (kill -9, a crash)
would leave its engine holding most of the Mac's unified memory. The tether sits between the agent and the
engine, in the engine's process group: it starts ARGV, passes SIGTERM/SIGINT on, exits with ARGV's status,
and when its parent is gone (it is re-parented, to launchd or init) it ends the whole group: SIGTERM, a grace
period, then SIGKILL. Only what macOS has: os.getppid, os.killpg, no /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5
GRACE_S = 10.0


def wrap(argv: list[str] | tuple[str, ...], python: str = sys.executable) -> list[str]:
    """The command line that runs argv tethered to the caller (named by pid: it may die before we look)."""
    return [python, "-m", "worker.tether", "--parent", str(os.getpid()), "--", *argv]


def run(argv: list[str], parent: int, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> int:
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
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit("usage: python -m worker.tether [--parent PID] -- COMMAND [ARG…]")
    sys.exit(run(argv, parent))


if __name__ == "__main__":
    main()
