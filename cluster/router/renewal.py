"""The router renews every pinned lab agent's short-lived certificate at half its life, over the agent's own
mutual-TLS channel (`Renew`), with the cluster CA on the head: a running head keeps its lab's certificates fresh
with no person and no SSH, and a leaked agent key dies within days on its own. Every agent in the pin record is
renewed, a shard group's members too (the router does not route to them, but their peers check them).

Each renewal holds that agent's lock from reading its pin to recording the next (cluster/pki/pins.py), so
`cluster up`, `cluster certs` and another router during a hand-over never interleave on one agent: the renewal
skips an agent whose lock is taken and tries again in RETRY_S. The call goes over a channel of its own, dialled
by the recorded pin, so the new key goes only to the agent that holds the current certificate. The new
certificate carries the old pin and a new one: whichever the router dials while the record changes passes. An
agent that cannot be reached is tried again; one whose certificate expired meanwhile needs `cluster up`.
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
from cluster.router.registry import failure_reason
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.shared import tls

log = logging.getLogger(__name__)

RENEW_EVERY_S = 600.0  # at least this often (a round also comes when the next certificate falls due)
RENEW_DEADLINE_S = 10.0
RETRY_S = 30.0  # an agent due but not reachable: tried again this often


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
    """One task in the router: a round at start (a router that was down catches up), then one when the next
    certificate falls due (at least every `every_s`)."""

    def __init__(
        self,
        tls_dir: Path,
        ca_dir: Path,
        every_s: float = RENEW_EVERY_S,
        life: dt.timedelta = authority.AGENT_LIFE,
    ) -> None:
        self.tls_dir, self.ca_dir = tls_dir, ca_dir
        self.every_s, self.life = every_s, life
        self._failures: dict[str, str] = {}  # the last reason each agent was not renewed: logged when it changes

    async def run(self) -> None:
        while True:
            try:
                await self.round(authority.now_utc())
                wait = next_round_in(pins.read(self.tls_dir), authority.now_utc(), self.every_s)
            except Exception:  # a damaged record, an unreadable CA, a full disk: said, and tried again
                log.exception("agent certificates not renewed; next try in %.0f s", RETRY_S)
                wait = RETRY_S
            await asyncio.sleep(wait)

    async def round(self, now: dt.datetime) -> list[str]:
        """Renew what is due and reachable; the addresses renewed."""
        due = due_agents(pins.read(self.tls_dir), now)
        if not due:
            return []
        ca = authority.load_folder(self.ca_dir)
        if ca is None:
            raise authority.AuthorityError(f"{self.ca_dir}: no cluster CA here (--ca-dir)")
        return [address for address in due if await self._renew(ca, address, now)]

    async def _renew(self, ca: authority.Authority, address: str, now: dt.datetime) -> bool:
        lock = pins.acquire(self.tls_dir, address, wait=False)
        if lock is None:
            return False  # `cluster up` or `cluster certs` is at this agent now
        try:
            held = pins.read(self.tls_dir).agents.get(address)
            if held is None or address not in due_agents(pins.Pins(agents={address: held}), now):
                return False  # renewed, revoked or dropped since the round began
            pin = pins.new_name()
            identity = successor(ca, held, pin, now, self.life)
            if not await self._send(address, held.name, identity):
                return False
            certificate = tls.split_identity(identity)[1]
            with pins.editing(self.tls_dir) as book:
                book.agents[address] = held.model_copy(update={"name": pin, "certificate": certificate.decode()})
        finally:
            lock.close()
        until = x509.load_pem_x509_certificate(certificate).not_valid_after_utc
        log.info("worker %s: certificate renewed, valid until %sZ", address, f"{until:%Y-%m-%d %H:%M}")
        self._failures.pop(address, None)
        return True

    async def _send(self, address: str, pin: str, identity: bytes) -> bool:
        """Renew over a channel dialled by the agent's recorded pin."""
        try:
            async with tls.channel(address, self.tls_dir, [("grpc.ssl_target_name_override", pin)]) as channel:
                request = pb.RenewRequest(identity=identity)
                await pb_grpc.WorkerStub(channel).Renew(request, timeout=RENEW_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            reason = failure_reason(exc)
            if self._failures.get(address) != reason and len(self._failures) < pins.MAX_AGENTS:
                log.warning(
                    "worker %s: certificate not renewed (%s); tried again every %.0f s", address, reason, RETRY_S
                )
                self._failures[address] = reason
            return False
        return True
