"""Who gets which certificate from the cluster CA (cluster/pki/authority.py), and where it goes: the router's
client identity and the local agent's on the head, each lab agent's on its host over SSH.

An identity is issued when missing, from another CA, for other names, or due for renewal (a lab agent's 3-day
certificate at half its life, which the running router does first; the head's own within 30 days of expiry) —
or always when rotating. A lab agent's is pinned (cluster/pki/pins.py): revoking it takes effect at once.
Agents read a replaced identity at their next connection and the router opens new channels when its own or a
pin changed, so a rotation drops no call.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from cryptography import x509

from cluster.bringup import remote
from cluster.pki import authority, pins
from cluster.placement.hostsfile import HostSpec

ROUTER = "router"
LOCAL_AGENT = "local-agent"


def router_identity(home: Path, ca: authority.Authority, now: dt.datetime, renew: bool = False) -> bool:
    folder = authority.tls_folder(home, ROUTER)
    return authority.ensure_identity(folder, ca, authority.ROUTER_NAME, (authority.ROUTER_NAME,), now, renew)


def local_identities(home: Path, renew: bool = False) -> list[str]:
    """The CA (created once), the router's and the local agent's identities; returns who got a new one."""
    now = authority.now_utc()
    ca = authority.load_or_create(home, now)
    issued = [ROUTER] if router_identity(home, ca, now, renew) else []
    folder = authority.tls_folder(home, LOCAL_AGENT)
    if authority.ensure_identity(folder, ca, "orchard local agent", authority.local_names(), now, renew):
        issued.append(LOCAL_AGENT)
    return issued


ENDPOINT = "endpoint"


def endpoint_path(home: Path) -> Path:
    """The endpoint's identity file (key and certificate): uvicorn reads both from it."""
    return authority.tls_folder(home, ENDPOINT) / "identity.pem"


def endpoint_names(host: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What clients may call the endpoint by: this machine's names and loopback, the address it listens on
    (unless a wildcard) and whatever the operator adds (`[router] tls_names`)."""
    names = [*authority.local_names(), socket.gethostname(), socket.getfqdn()]
    if host not in ("0.0.0.0", "::", "[::]", ""):
        names.append(host)
    return tuple(dict.fromkeys([*names, *extra]))


def endpoint_identity(home: Path, hosts: tuple[str, ...], extra: tuple[str, ...] = ()) -> bool:
    """A certificate from the cluster CA for the endpoint (HTTPS) unless a current one names all of these."""
    now = authority.now_utc()
    ca = authority.load_or_create(home, now)
    names = tuple(dict.fromkeys(n for host in hosts for n in endpoint_names(host, extra)))
    return authority.ensure_identity(endpoint_path(home).parent, ca, "orchard endpoint", names, now, client=False)


def renew_endpoint(home: Path) -> bool:
    """Re-issue the endpoint's certificate from the cluster CA for the names it has, if the CA issued one; the
    router picks it up for new connections."""
    try:
        names = tuple(authority.names_of(authority.certificate_of(endpoint_path(home).read_bytes())))
    except (OSError, ValueError):
        return False
    now = authority.now_utc()
    ca = authority.load_or_create(home, now)
    folder = endpoint_path(home).parent
    return authority.ensure_identity(folder, ca, "orchard endpoint", names, now, renew=True, client=False)


def agent_names(host: HostSpec) -> tuple[str, ...]:
    """What the router and the group's other agents dial it by: its address; its name too, for people."""
    return tuple(dict.fromkeys((host.address, host.label)))


async def agent_identity(
    conn: asyncssh.SSHClientConnection,
    host: HostSpec,
    ca: authority.Authority,
    home: Path,
    now: dt.datetime,
    renew: bool = False,
    revoke: bool = False,
) -> bool:
    """Issue and copy the host's agent identity unless it holds the current one the router pins; True if it got a
    new one. A renewed certificate keeps the old pin too (the router may dial by it until it reads the new one);
    a revoking one does not. The agent's lock is held throughout: the router's renewal waits or skips a round."""
    folder = authority.tls_folder(home, ROUTER)
    async with _agent_locked(folder, host.agent_address):
        held = pins.read(folder).agents.get(host.agent_address)
        names = agent_names(host)
        if not (renew or revoke) and held is not None and not held.revoked:
            if authority.current(await remote.installed_certificates(conn, host), ca, (*names, held.name), now):
                return False
        pin = pins.new_name()
        kept = (held.name,) if held is not None and not (revoke or held.revoked) else ()
        identity = authority.issue(
            ca, f"orchard agent {host.label}", (*names, *kept, pin), now, life=authority.AGENT_LIFE
        )
        await remote.install_identity(conn, host, ca.pem, identity)
        with pins.editing(folder) as book:
            book.agents[host.agent_address] = pins.Pin(label=host.label, name=pin, certificate=_chain(identity))
    return True


async def revoke(home: Path, host: HostSpec) -> None:
    """The router stops accepting the host's certificate from its next look at the record (every 2 s): until a
    new one reaches the host, no certificate passes. Waits for a renewal of this agent in flight (≤ 10 s)."""
    folder = authority.tls_folder(home, ROUTER)
    async with _agent_locked(folder, host.agent_address):
        with pins.editing(folder) as book:
            held = book.agents.get(host.agent_address) or pins.Pin(label=host.label, name=pins.new_name())
            book.agents[host.agent_address] = held.model_copy(update={"revoked": True})


def forget_others(home: Path, addresses: set[str]) -> list[str]:
    """Drop the pins of agents no longer placed (the router stops renewing them); their labels."""
    return pins.forget_others(authority.tls_folder(home, ROUTER), addresses)


@contextlib.asynccontextmanager
async def _agent_locked(folder: Path, address: str) -> AsyncIterator[None]:
    lock = await asyncio.to_thread(pins.acquire, folder, address)  # a thread: other hosts' SSH sessions go on
    assert lock is not None  # a waiting acquire returns the lock
    try:
        yield
    finally:
        lock.close()


def _chain(identity: bytes) -> str:
    return identity[identity.index(b"-----BEGIN CERTIFICATE-----") :].decode()


@dataclass(frozen=True)
class Expiry:
    who: str
    certificate: x509.Certificate | None  # None: not issued (or unreadable)
    agent: bool = False  # a lab agent's: the router renews it
    revoked: bool = False

    def text(self, now: dt.datetime) -> str:
        if self.revoked:
            return "revoked (cluster up issues a new one)"
        if self.certificate is None:
            return "none"
        until = self.certificate.not_valid_after_utc
        left = until - now
        if left <= dt.timedelta(0):
            return f"{until:%Y-%m-%d %H:%M}Z (expired; cluster up issues a new one)"
        span = f"{left.days} days" if left.days >= 2 else f"{max(0, int(left.total_seconds() // 3600))} h"
        warn = ""
        if authority.due(self.certificate, now):
            warn = (
                " [overdue: the router renews it while it reaches the agent]"
                if self.agent
                else " [renew: cluster certs rotate]"
            )
        return f"{until:%Y-%m-%d %H:%M}Z ({span}){warn}"


def expiries(home: Path, agents: list[str]) -> list[Expiry]:
    """The CA's, the router's and each agent's certificate expiry, as the head knows them (a lab agent's from the
    pin record, which the router keeps current as it renews)."""
    files = {"CA": authority.ca_folder(home) / "ca.pem", ROUTER: authority.tls_folder(home, ROUTER) / "identity.pem"}
    if LOCAL_AGENT in agents:
        files[LOCAL_AGENT] = authority.tls_folder(home, LOCAL_AGENT) / "identity.pem"
    if endpoint_path(home).exists():
        files[ENDPOINT] = endpoint_path(home)
    found = [Expiry(who, _certificate(_read(path))) for who, path in files.items()]
    book = pins.read(authority.tls_folder(home, ROUTER))
    for label in (a for a in agents if a != LOCAL_AGENT):
        pin = held[1] if (held := book.by_label(label)) else None
        found.append(
            Expiry(
                label,
                _certificate(pin.certificate.encode() if pin else b""),
                agent=True,
                revoked=bool(pin and pin.revoked),
            )
        )
    return found


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _certificate(pem: bytes) -> x509.Certificate | None:
    try:
        return authority.certificate_of(pem) if pem else None
    except ValueError:
        return None
