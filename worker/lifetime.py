"""Process lifetime helpers shared by the agent (engine children) and the CLI (agent and router children)."""

from __future__ import annotations

import signal
import sys


def die_with_parent() -> None:
    """Run in a child between fork and exec: on Linux the child gets SIGTERM when its parent dies
    (PR_SET_PDEATHSIG), so a killed parent never leaves an engine or agent behind. No-op elsewhere."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
