"""What the head and a host's `python -m worker.store.sync` say to each other, one JSON line each way at a time:

head → host   SyncOrder      the model, which of its files this host must hold, where to serve peers from
host → head   SyncEvent      ready (what it has, what it needs, its port), progress, done / failed, closed
head → host   SyncSources    where to pull each needed file from, best first (a peer, then the head)
head → host   (end of input) the lab is done: stop serving and exit
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.shared.store.manifest import Manifest


def gb(n: int) -> str:
    """Bytes as a copy's messages show them: MB below a GB."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class SyncOrder(_Message):
    root: str  # the host's model store (`~` is the host's home)
    manifest: Manifest
    wanted: tuple[str, ...]  # the files this host must hold (a pipeline rank: only its layers' files)
    bind: str = ""  # the address peers reach this host at; "" serves nobody
    token: str = Field(default="", repr=False)  # what a peer must present; the head made it for this push only


class SyncSources(_Message):
    sources: dict[str, tuple[str, ...]]  # file → base URLs to pull it from, in order


class SyncEvent(_Message):
    kind: Literal["ready", "progress", "done", "failed", "closed"]
    folder: str = ""  # ready: the model's folder here, which its engine is given
    port: int = 0  # ready: where this host serves its files to peers (0: it does not)
    have: tuple[str, ...] = ()  # ready: wanted files already here and verified
    need_bytes: int = 0  # ready: bytes still to copy (a resumed file counts what is missing)
    partial_bytes: int = 0  # ready: bytes of interrupted copies kept, to resume from
    free_bytes: int = 0  # ready: free disk where the model goes
    done: int = 0  # progress / done: bytes copied so far in this run
    total: int = 0  # progress: bytes to copy in this run
    served: int = 0  # closed: bytes this host sent to peers
    recopied: tuple[str, ...] = ()  # done: files whose copy failed its hash once and was copied again
    reason: str = ""  # failed: why, naming the file
