"""Small files under ~/.orchard (what `cluster up` started, the cluster's certificates), typed, read and written in
one place: atomically (a temporary file renamed over the old one, so a reader or a crash never sees half a file)
and readable by the owner only."""

from __future__ import annotations

import contextlib
import os
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
    write_private(path, (record.model_dump_json(indent=2) + "\n").encode())


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace path with data atomically; the file is created with `mode` (never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # an old temporary left by a crash kept its mode
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
