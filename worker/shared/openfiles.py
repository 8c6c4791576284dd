"""The open-file limit a process starts with is not ours to assume: launchd starts processes with a soft limit of
256 on macOS. The router and the agent raise theirs toward the hard limit at start, and size what holds a file
descriptor (client connections, engine connections) from what they got.

The system calls are passed in, so every branch (macOS's unlimited hard limit, a refusal) is tested here.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass

DARWIN_OPEN_MAX = 10240  # macOS refuses RLIM_INFINITY as a soft limit; OPEN_MAX (sys/syslimits.h) it takes
LINUX_CEILING = 1 << 20  # nr_open's default: an unlimited hard limit is not a number to ask for

GetLimit = Callable[[int], tuple[int, int]]
SetLimit = Callable[[int, tuple[int, int]], None]


@dataclass(frozen=True)
class OpenFiles:
    before: int  # the soft limit the process started with
    soft: int  # the soft limit now
    hard: int  # RLIM_INFINITY when unlimited

    def describe(self) -> str:
        hard = "unlimited" if self.hard == resource.RLIM_INFINITY else str(self.hard)
        raised = f"raised from {self.before}" if self.soft != self.before else "not raised"
        return f"open-file limit {self.soft} ({raised}; hard limit {hard})"


def raise_limit(
    platform: str = sys.platform,
    get: GetLimit = resource.getrlimit,
    set_: SetLimit = resource.setrlimit,
) -> OpenFiles:
    """Raise the soft limit as far as the system lets this process; what it was and what it is."""
    soft, hard = get(resource.RLIMIT_NOFILE)
    for wanted in _candidates(platform, soft, hard):
        try:
            set_(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            continue
        return OpenFiles(before=soft, soft=get(resource.RLIMIT_NOFILE)[0], hard=hard)  # what it took, read back
    return OpenFiles(before=soft, soft=soft, hard=hard)


def _candidates(platform: str, soft: int, hard: int) -> list[int]:
    unlimited = hard == resource.RLIM_INFINITY
    if platform == "darwin":  # the kernel's per-process cap (kern.maxfilesperproc) may be lower than hard
        first = DARWIN_OPEN_MAX if unlimited else min(hard, DARWIN_OPEN_MAX * 8)
        wanted = [first, DARWIN_OPEN_MAX]
    else:
        wanted = [LINUX_CEILING if unlimited else min(hard, LINUX_CEILING)]
    return [w for w in dict.fromkeys(wanted) if w > soft and (unlimited or w <= hard)]


def cap(wanted: int, limits: OpenFiles, reserved: int) -> int:
    """How many of `wanted` descriptors fit beside `reserved` others (log files, sockets to peers): at least 1."""
    return max(1, min(wanted, limits.soft - reserved))
