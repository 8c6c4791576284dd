"""Orchard's dependencies as wheels, fetched on the head: the lab's hosts have no route to PyPI."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def wheelhouse(folder: Path) -> Path:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(folder), *deps],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.skip(f"could not fetch Orchard's dependency wheels from PyPI for the wheelhouse: {result.stderr[-300:]}")
    return folder
