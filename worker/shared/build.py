"""Which Orchard build a process runs: the package version and a digest of its source files.

The head and every host compute the digest the same way over their installed `cluster`, `worker` and `proto`
packages, so `cluster up` can tell a host that runs other code (an older install, a hand edit) from one that
runs the head's, even while the version number stays the same during development.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("cluster", "worker", "proto")
ROOT = Path(__file__).resolve().parents[2]  # the folder holding the three packages (a checkout, or site-packages)
SUFFIXES = (".py", ".proto")


def version() -> str:
    try:
        return metadata.version("orchard")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@cache
def digest(root: Path | None = None) -> str:
    """16 hex digits over every source file of the three packages under `root` (default: where they are)."""
    root = root or ROOT
    h = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def describe() -> str:
    return f"{version()} (build {digest()})"
