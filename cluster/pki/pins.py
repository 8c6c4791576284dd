"""The pin record: which one certificate the router accepts from each lab agent.

Besides its address and name, every lab agent's certificate carries one more name made for it alone, its pin
(`<random>.pin.orchard.invalid`; `.invalid` never resolves). The router dials each agent asking for that name
(gRPC's target name override), so only the certificate last issued to that agent passes: a copy of an older key
does not, even before it expires. Renewing issues a certificate that holds the old pin and a new one, then moves
the pin; revoking moves it at once (or marks it revoked, when the host cannot be reached to get a new one).

    ~/.orchard/tls/router/pins.json   (0600) dial address → Pin; written under a lock by `cluster up`,
                                      `cluster certs`, and the router when it renews
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from cluster.state import records

PINS_FILE = "pins.json"
SUFFIX = ".pin.orchard.invalid"
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


def read(folder: Path) -> Pins:
    return records.read(path(folder), Pins) or Pins()


def stamp(folder: Path) -> tuple[int, int, int] | None:
    """Changes whenever the record is replaced (None: there is none)."""
    try:
        s = os.stat(path(folder))
    except OSError:
        return None
    return s.st_mtime_ns, s.st_size, s.st_ino


@contextlib.contextmanager
def editing(folder: Path, wait: bool = True) -> Iterator[Pins]:
    """The record, read under an exclusive lock and written back when the block ends without an error; with
    `wait` false, BlockingIOError when another process holds it (the router then tries at its next round). Written
    only when changed: the router re-dials an agent whose pin the file moved."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".pins.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        book = read(folder)
        before = book.model_copy(deep=True)
        yield book
        if book != before:
            records.write(path(folder), book)
