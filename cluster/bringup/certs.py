"""Who gets which certificate from the cluster CA (cluster/bringup/authority.py), and where it goes: the router's
client identity and the local agent's on the head, each lab agent's on its host over SSH.

An identity is issued when missing, from another CA, for other names, or within 30 days of expiry — or always
when rotating. Agents read a replaced identity at their next connection and the router opens new channels when
its own changed, so a rotation drops no call.
"""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from cluster.bringup import authority, records, remote
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
    conn: asyncssh.SSHClientConnection, host: HostSpec, ca: authority.Authority, home: Path, now: dt.datetime,
    renew: bool = False,
) -> bool:  # fmt: skip
    """Issue and copy the host's agent identity unless it holds a current one; True if it got a new one. The
    public half is kept on the head for `cluster status`."""
    names = agent_names(host)
    if not renew and authority.current(await remote.installed_certificates(conn, host), ca, names, now):
        return False
    identity = authority.issue(ca, f"orchard agent {host.label}", names, now)
    await remote.install_identity(conn, host, ca.pem, identity)
    certificate = identity[identity.index(b"-----BEGIN CERTIFICATE-----") :]
    records.write_private(authority.issued_path(home, host.label), certificate, mode=0o644)
    return True


@dataclass(frozen=True)
class Expiry:
    who: str
    until: dt.datetime | None  # None: not issued (or unreadable)

    def text(self, now: dt.datetime) -> str:
        if self.until is None:
            return "none"
        days = (self.until - now).days
        warn = " [renew: cluster certs rotate]" if days < authority.RENEW_WITHIN_DAYS else ""
        return f"{self.until:%Y-%m-%d} ({days} days){warn}"


def expiries(home: Path, agents: list[str]) -> list[Expiry]:
    """The CA's, the router's and each agent's certificate expiry, as the head knows them."""
    files = {"CA": authority.ca_folder(home) / "ca.pem",
             ROUTER: authority.tls_folder(home, ROUTER) / "identity.pem"}  # fmt: skip
    files.update({label: _agent_file(home, label) for label in agents})
    if endpoint_path(home).exists():
        files[ENDPOINT] = endpoint_path(home)
    return [Expiry(who, _until(path)) for who, path in files.items()]


def _agent_file(home: Path, label: str) -> Path:
    if label == LOCAL_AGENT:
        return authority.tls_folder(home, LOCAL_AGENT) / "identity.pem"
    return authority.issued_path(home, label)


def _until(path: Path) -> dt.datetime | None:
    try:
        return authority.expires(path.read_bytes())
    except (OSError, ValueError):
        return None
