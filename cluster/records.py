"""Small JSON records under ~/.orchard (what `cluster up` started), read and written in one place."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def read(path: Path, kind: type[T]) -> T | None:
    """The record at path as `kind`, or None when it is missing, unreadable or of another shape."""
    try:
        return kind(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write(path: Path, record: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(record), indent=2) + "\n")
