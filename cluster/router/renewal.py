"""The router renews every pinned lab agent's short-lived certificate at half its life, over the agent's own
mutual-TLS channel (`Renew`), with the cluster CA on the head: a running head keeps its lab's certificates fresh
with no person and no SSH, and a leaked agent key dies within days on its own.

A renewal holds the pin record's lock from issue to record (another router during a hand-over, or `cluster up`,
waits or skips a round, never interleaves); the new certificate carries the old pin and a new one, so whichever
the router dials while the record changes, it passes. An agent that cannot be reached is tried again at the
next round; one whose certificate expired meanwhile gets a new one from `cluster up` over SSH.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from cluster.pki import authority, pins
from cluster.router.registry import Registry, failure_reason
from proto import orchard_pb2 as pb

log = logging.getLogger(__name__)

RENEW_EVERY_S = 600.0  # at least this often (a round also comes when the next certificate falls due)
RENEW_DEADLINE_S = 10.0
RETRY_S = 30.0  # an agent due but not reachable: tried again this often
FIRST_ROUND_WITHIN_S = 60.0  # the first round waits for every agent to connect, at most this long


def _certificates(book: pins.Pins) -> dict[str, x509.Certificate]:
    """The renewable ones: a revoked agent waits for `cluster up`, one without a readable certificate too."""
    found = {}
    for address, pin in book.agents.items():
        if pin.revoked or not pin.certificate:
            continue
        try:
            found[address] = authority.certificate_of(pin.certificate.encode())
        except ValueError:
            continue
    return found


def due_agents(book: pins.Pins, now: dt.datetime) -> list[str]:
    """The addresses whose certificate is due, in the record's order."""
    return [address for address, c in _certificates(book).items() if authority.due(c, now)]


def next_round_in(book: pins.Pins, now: dt.datetime, every_s: float) -> float:
    """Seconds to the next round: when the next certificate falls due, at most `every_s`; an agent still due
    (it could not be reached) is tried again within RETRY_S."""
    times = [authority.renew_at(c) for c in _certificates(book).values()]
    wait = min([every_s, *((t - now).total_seconds() + 1 for t in times if t > now)])
    if any(t <= now for t in times):
        wait = min(wait, RETRY_S)
    return max(wait, 1.0)


def successor(ca: authority.Authority, held: pins.Pin, pin: str, now: dt.datetime, life: dt.timedelta) -> bytes:
    """The identity that follows `held`: the same common name and names, the old pin and the new one."""
    certificate = authority.certificate_of(held.certificate.encode())
    names = [n for n in authority.names_of(certificate) if not pins.is_pin(n)]
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(common[0].value) if common else f"orchard agent {held.label}"
    return authority.issue(ca, name, (*names, held.name, pin), now, life=life)


class Renewer:
    """One task beside the registry: a round once the agents are connected (a router that was down catches up),
    then one when the next certificate falls due (at least every `every_s`)."""

    def __init__(
        self, registry: Registry, tls_dir: Path, ca_dir: Path, every_s: float = RENEW_EVERY_S,
        life: dt.timedelta = authority.AGENT_LIFE,
    ) -> None:  # fmt: skip
        self.registry, self.tls_dir, self.ca_dir = registry, tls_dir, ca_dir
        self.every_s, self.life = every_s, life

    async def run(self) -> None:
        await self.registry.settled(FIRST_ROUND_WITHIN_S)
        while True:
            await self.round(authority.now_utc())
            await asyncio.sleep(next_round_in(pins.read(self.tls_dir), authority.now_utc(), self.every_s))

    async def round(self, now: dt.datetime) -> list[str]:
        """Renew what is due and reachable; the addresses renewed."""
        if not pins.path(self.tls_dir).exists():
            return []
        try:
            ca = authority.load_folder(self.ca_dir)
        except authority.AuthorityError as exc:
            log.error("agent certificates not renewed: %s", exc)
            return []
        if ca is None:
            return []
        try:
            with pins.editing(self.tls_dir, wait=False) as book:
                return [a for a in due_agents(book, now) if await self._renew(ca, book, a, now)]
        except BlockingIOError:
            return []  # another process holds the record: next round

    async def _renew(self, ca: authority.Authority, book: pins.Pins, address: str, now: dt.datetime) -> bool:
        handle = self.registry.workers.get(address)
        if handle is None or handle.stub is None or not handle.connected:
            return False
        held, pin = book.agents[address], pins.new_name()
        identity = successor(ca, held, pin, now, self.life)
        try:
            await handle.stub.Renew(pb.RenewRequest(identity=identity), timeout=RENEW_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            log.warning("worker %s: certificate not renewed (%s); next try in %.0f s", address,
                        failure_reason(exc), self.every_s)  # fmt: skip
            return False
        certificate = identity[identity.index(b"-----BEGIN CERTIFICATE-----") :]
        book.agents[address] = held.model_copy(update={"name": pin, "certificate": certificate.decode()})
        until = x509.load_pem_x509_certificate(certificate).not_valid_after_utc
        log.info("worker %s: certificate renewed, valid until %sZ", address, f"{until:%Y-%m-%d %H:%M}")
        return True
