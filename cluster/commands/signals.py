"""Every `cluster` command's one signal policy, installed by cluster/cli.py whatever the command inherited (a
background job, `nohup` and some CI runners start it with SIGINT ignored, which would make Ctrl-C a no-op):
Ctrl-C and SIGTERM raise KeyboardInterrupt in the main thread, and `STOP` says that one came."""

from __future__ import annotations

import signal
import threading

STOP = threading.Event()
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum: int, _frame: object) -> None:
    STOP.set()
    raise KeyboardInterrupt


def take() -> None:
    for sig in SIGNALS:
        signal.signal(sig, _interrupt)


def hold() -> None:
    """While a command cleans up: a second Ctrl-C must not cut that short."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
