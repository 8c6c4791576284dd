"""Small JSON records under ~/.orchard (what `cluster up` started), typed, read and written in one place."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read(path: Path, kind: type[M]) -> M | None:
    """The record at path as `kind`, or None when it is missing, unreadable or of another shape."""
    try:
        return kind.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def write(path: Path, record: BaseModel) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record.model_dump_json(indent=2) + "\n")
