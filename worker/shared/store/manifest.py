"""A model at one revision as its source describes it: every file with its size and the hash its source
publishes — an LFS file's sha256, any other file's git blob sha1 (the hub's `blob_id`, what `git hash-object`
prints), or, for a folder imported into the store, the sha256 the store computed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

CHUNK = 4 * 1024 * 1024
META = ".orchard"  # a model folder's own bookkeeping (folder.py), never one of its files
HEX = frozenset("0123456789abcdef")


def relative_path(path: str) -> str:
    """`path` if it stays inside a model folder: relative, '/'-separated, no '..' or empty part, not in the
    folder's own bookkeeping; else ValueError. A manifest names the files a host writes and serves."""
    parts = path.split("/")
    if not path or "\\" in path or "\0" in path or any(p in ("", ".", "..") for p in parts) or parts[0] == META:
        raise ValueError(f"not a file inside a model folder: {path!r}")
    return path


def folder_name(name: str) -> str:
    """A source's slug or a revision as one folder name (no separator, not '.' or '..')."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ValueError(f"not usable as a folder name: {name!r}")
    return name


class ModelFile(BaseModel):
    """One file of a model at one revision."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    path: str  # relative to the model's folder, '/'-separated
    size: int
    sha256: str | None = None
    git_sha1: str | None = None  # when no sha256 is published

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        return relative_path(value)

    def digest(self) -> Digest:
        return Digest(self)


class Manifest(BaseModel):
    """A model in the store: `source` as a hosts file names it, one `revision` (a hub commit, or the digest of an
    imported folder's files) and its files."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    source: str
    revision: str
    files: tuple[ModelFile, ...]
    origin: str = ""  # where the store got it: the hub, a folder's path, "bundled"
    refs: tuple[str, ...] = ()  # the branch or tag names it was pulled as (a hub model)
    pulled_at: float = 0.0  # when the store got it (unix time): the newest copy is the default

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        return folder_name(value)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        folder_name(value.strip("/").replace("/", "--"))
        return value

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> ModelFile | None:
        return next((f for f in self.files if f.path == path), None)


class Digest:
    """The hash `file` is checked by, fed as its bytes arrive (a copy hashes while it writes)."""

    def __init__(self, file: ModelFile) -> None:
        self.file = file
        self.expected: str | None
        if file.sha256 is not None:
            self._hash, self.expected = hashlib.sha256(), file.sha256
        elif file.git_sha1 is not None:
            self._hash, self.expected = hashlib.sha1(f"blob {file.size}\0".encode()), file.git_sha1
        else:
            self._hash, self.expected = hashlib.sha256(), None

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def feed(self, path: Path, limit: int | None = None) -> None:
        """Hash `path`'s first `limit` bytes (all by default)."""
        left = limit if limit is not None else path.stat().st_size
        with path.open("rb") as data:
            while left > 0 and (chunk := data.read(min(CHUNK, left))):
                self.update(chunk)
                left -= len(chunk)

    def matches(self) -> bool:
        return self.expected is None or self._hash.hexdigest() == self.expected

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def problem(folder: Path, file: ModelFile) -> str | None:
    """Why `folder`'s copy of `file` is not the one published (None: it is)."""
    path = folder / file.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{file.path}: missing"
    if size != file.size:
        return f"{file.path}: {size} bytes, expected {file.size}"
    digest = file.digest()
    digest.feed(path)
    return None if digest.matches() else f"{file.path}: content differs from the published hash"
