"""A model file checked against the hash its source publishes: an LFS file's sha256, any other file's git blob
sha1 (what `git hash-object` prints; the hub's `blob_id`). Streamed: weight files are gigabytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict

CHUNK = 4 * 1024 * 1024


class ModelFile(BaseModel):
    """One file of a model at one revision, as its source describes it."""

    model_config = ConfigDict(frozen=True)

    path: str  # relative to the model's folder
    size: int
    sha256: str | None = None  # LFS files
    git_sha1: str | None = None  # every other file


def problem(folder: Path, file: ModelFile) -> str | None:
    """Why `folder`'s copy of `file` is not the one published (None: it is)."""
    path = folder / file.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{file.path}: missing"
    if size != file.size:
        return f"{file.path}: {size} bytes, expected {file.size}"
    if file.sha256 is not None:
        digest, expected = hashlib.sha256(), file.sha256
    elif file.git_sha1 is not None:
        digest, expected = hashlib.sha1(f"blob {size}\0".encode()), file.git_sha1
    else:
        return None  # nothing published to check against: its size matched
    with path.open("rb") as data:
        while chunk := data.read(CHUNK):
            digest.update(chunk)
    return None if digest.hexdigest() == expected else f"{file.path}: content differs from the published hash"
