"""The pin record: which one certificate the router accepts from each lab agent.

Besides its address and name, every lab agent's certificate carries one more name made for it alone, its pin
(`<random>.pin.orchard.invalid`; `.invalid` never resolves). The router dials each agent asking for that name
(gRPC's target name override), so only the certificate last issued to that agent passes: a copy of an older key
does not, even before it expires. Renewing issues a certificate that holds the old pin and a new one, then moves
the pin; revoking marks the pin revoked at once, then moves it when the host has its new certificate.

    ~/.orchard/tls/router/pins.json       (0600) dial address → Pin, rewritten under a short lock
    ~/.orchard/tls/router/.locks/*.lock   one per agent, held from reading its pin to recording the next one
                                          (issue, install over SSH or Renew in between), so `cluster up`,
                                          `cluster certs` and the router's renewal never interleave on one agent
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import BaseModel, Field, ValidationError

from cluster.state import records
from worker.shared import tls

PINS_FILE = "pins.json"
SUFFIX = tls.PIN_SUFFIX
REVOKED = "revoked" + SUFFIX  # dialled for a revoked agent: no certificate carries it, so every call is refused
MAX_AGENTS = 4096  # far beyond a lab; a bound on what the router reads every few seconds


class Pin(BaseModel):
    label: str  # the host's name in the hosts file
    name: str  # the pin: the name the router asks this agent's certificate for
    certificate: str = ""  # the certificate issued with it (PEM, public): its expiry and life, for renewal
    revoked: bool = False  # `cluster certs revoke` ended it and no new one has reached the host yet

    @property
    def dialled(self) -> str:
        return REVOKED if self.revoked else self.name


class Pins(BaseModel):
    agents: dict[str, Pin] = Field(default_factory=dict, max_length=MAX_AGENTS)

    def by_label(self, label: str) -> tuple[str, Pin] | None:
        return next(((address, pin) for address, pin in self.agents.items() if pin.label == label), None)


def new_name() -> str:
    return f"{secrets.token_hex(16)}{SUFFIX}"


def is_pin(name: str) -> bool:
    return name.endswith(SUFFIX)


def path(folder: Path) -> Path:
    """The record in the router's TLS folder."""
    return folder / PINS_FILE


class PinsError(Exception):
    """The record exists but cannot be read: nothing is pinned by guesswork; the message says what to do."""


def read(folder: Path) -> Pins:
    """The record (empty when there is none). PinsError when it is damaged: a reader that fell back to "no pins"
    would accept any certificate naming an agent's address, a revoked one too."""
    try:
        data = path(folder).read_bytes()
    except FileNotFoundError:
        return Pins()
    except OSError as exc:
        raise PinsError(f"{path(folder)}: {exc.strerror}") from None
    try:
        return Pins.model_validate_json(data)
    except ValidationError as exc:
        raise PinsError(
            f"{path(folder)}: unreadable ({exc.error_count()} errors); move it away and run "
            "`cluster up` (every lab agent then gets a new certificate)"
        ) from None


def stamp(folder: Path) -> tuple[int, int, int] | None:
    """Changes whenever the record is replaced (None: there is none)."""
    try:
        s = os.stat(path(folder))
    except OSError:
        return None
    return s.st_mtime_ns, s.st_size, s.st_ino


@contextlib.contextmanager
def editing(folder: Path) -> Iterator[Pins]:
    """The record, read under an exclusive lock and written back when the block ends without an error; held for
    no more than a file's read and write (never across a network call). Written only when changed: the router
    re-dials an agent whose pin the file moved."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".pins.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        book = read(folder)
        before = book.model_copy(deep=True)
        yield book
        if book != before:
            records.write(path(folder), book)


def acquire(folder: Path, address: str, wait: bool = True) -> IO[str] | None:
    """The agent's own lock (an open file; close it to release), or None when `wait` is false and another
    process holds it. Blocking: call it from a thread in async code."""
    locks = folder / ".locks"
    locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = open(locks / f"{hashlib.sha256(address.encode()).hexdigest()[:16]}.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        lock.close()
        return None
    except BaseException:
        lock.close()
        raise
    return lock


def forget_others(folder: Path, addresses: set[str]) -> list[str]:
    """Drop the pins of agents no longer in the lab (a host removed, or moved to another address); their labels."""
    with editing(folder) as book:
        gone = [a for a in book.agents if a not in addresses]
        labels = [book.agents.pop(a).label for a in gone]
    return labels
