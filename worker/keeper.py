"""`python -m worker.keeper --name agent -- ARGV…`: run ARGV and start it again when it dies.

Orchard's own supervisor for the agent on a host that has no service manager job (the daemon's `start`), and
for the router on the head: a `kill -9`, a crash or an out-of-memory kill is followed by a restart one second
later, so a host serves again in seconds. launchd's KeepAlive and systemd's Restart= do the same for agents
installed as services. It passes SIGTERM/SIGINT on and exits with ARGV's status, so a stop is a stop: after
a signal it never restarts. Exit 0 (a clean stop) and 2 (a usage error: trying again cannot help) are final;
so is a first start that exits with an error within STARTUP_S (a port in use, a bad model: the launcher sees
it exit and shows the log; a kill is always restarted), and a child that keeps dying (more than
`max_restarts` within `window_s`). Only what macOS has.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

RESTART_DELAY_S = 1.0
MAX_RESTARTS = 5
WINDOW_S = 60.0
FINAL_CODES = (0, 2)
STARTUP_S = 3.0  # a first start that dies sooner is a bad configuration, not a crash: reported, not retried


@dataclass
class Restarts:
    """The restart budget: at most `limit` within `window_s` (a bounded record of recent ones)."""

    limit: int = MAX_RESTARTS
    window_s: float = WINDOW_S
    recent: deque[float] = field(default_factory=deque)

    def allow(self, now: float) -> bool:
        while self.recent and now - self.recent[0] > self.window_s:
            self.recent.popleft()
        if len(self.recent) >= self.limit:
            return False
        self.recent.append(now)
        return True


def should_restart(code: int, stopping: bool) -> bool:
    return not stopping and code not in FINAL_CODES


def describe(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def run(
    name: str, argv: list[str], budget: Restarts, delay_s: float = RESTART_DELAY_S, startup_s: float = STARTUP_S
) -> int:
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def _pass_on(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, _pass_on) for sig in (signal.SIGTERM, signal.SIGINT)}  # before any child
    try:
        while True:
            child = _start(argv)
            if stopping:  # a stop that came while it started went to the one before
                child.send_signal(signal.SIGTERM)
            began, code = time.monotonic(), child.wait()
            if not should_restart(code, stopping):
                return 128 - code if code < 0 else code
            if code > 0 and time.monotonic() - began < startup_s and not budget.recent:  # it exited: never came up
                _say(f"{name} {describe(code)} {time.monotonic() - began:.1f} s after it started: not restarting")
                return 1
            if not budget.allow(time.monotonic()):
                _say(f"{name} {describe(code)}; it died {budget.limit} times within {budget.window_s:g} s: giving up")
                return 1
            _say(f"{name} {describe(code)}; starting it again in {delay_s:g} s")
            time.sleep(delay_s)
            if stopping:
                return 128 + signal.SIGTERM
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    """Our process group: a stop that signals the group reaches the child too."""
    return subprocess.Popen(argv)


def _say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} keeper: {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.keeper", description=__doc__)
    parser.add_argument("--name", default="child")
    parser.add_argument("--max-restarts", type=int, default=MAX_RESTARTS)
    parser.add_argument("--window", type=float, default=WINDOW_S)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        parser.error("give the command after --")
    sys.exit(run(args.name, argv, Restarts(args.max_restarts, args.window)))


if __name__ == "__main__":
    main()
