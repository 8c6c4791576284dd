"""Mutual TLS on the contract: how the router, agents and a shard group's agents prove who they are to each other.

Each process holds one folder:

    ca.pem        the cluster CA's certificate: the only issuer a peer's certificate may come from
    identity.pem  this process's private key and certificate in one file (0600), replaced atomically, so a
                  reader never pairs a new key with an old certificate

The head's certificate authority (cluster/pki/authority.py) writes these folders; this module only reads
them. An agent re-reads its folder at each new connection (a rotation takes effect without a restart and
without dropping a call); the router opens new channels when its own identity changes (cluster/router).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import grpc

ROUTER_NAME = "orchard-router"  # the router's certificate's common name: only it may Generate or Drain on an agent
PIN_SUFFIX = ".pin.orchard.invalid"  # a lab agent certificate's own name, the one the router dials it by
CA_FILE = "ca.pem"
IDENTITY_FILE = "identity.pem"
log = logging.getLogger(__name__)
_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----\s*", re.S)
_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


class TlsError(Exception):
    """A TLS folder that is missing or does not hold what it should; the message names the file."""


@dataclass(frozen=True)
class Identity:
    """What one process presents and trusts: the CA certificate(s), its private key, its certificate chain."""

    ca: bytes
    key: bytes
    chain: bytes


def read_identity(folder: Path) -> Identity:
    ca_path, identity_path = folder / CA_FILE, folder / IDENTITY_FILE
    try:
        ca, identity = ca_path.read_bytes(), identity_path.read_bytes()
    except OSError as exc:
        raise TlsError(
            f"{exc.filename}: {exc.strerror} (create the cluster's certificates with: cluster certs init)"
        ) from None
    key, chain = split_identity(identity)
    if not key or not chain:
        raise TlsError(f"{identity_path}: expected a private key and a certificate (PEM)")
    if not _CERT.search(ca):
        raise TlsError(f"{ca_path}: expected the cluster CA's certificate (PEM)")
    return Identity(ca=ca, key=key, chain=chain)


def split_identity(pem: bytes) -> tuple[bytes, bytes]:
    """(private key, certificate chain) from one identity file; empty where missing."""
    key = _KEY.search(pem)
    return (key.group(0) if key else b""), b"".join(_CERT.findall(pem))


def _stamp(folder: Path) -> tuple[int, ...]:
    stats = [os.stat(folder / name) for name in (CA_FILE, IDENTITY_FILE)]
    return tuple(v for s in stats for v in (s.st_mtime_ns, s.st_size, s.st_ino))


def server_credentials(folder: Path) -> grpc.ServerCredentials:
    """An agent's server side: its identity, and only clients with a certificate from the cluster's CA. The
    folder is checked at every new connection (one stat per file) and re-read when it changed."""
    initial = read_identity(folder)  # first: a missing file is named, with the command that creates it
    seen = [_stamp(folder)]

    def configuration(identity: Identity) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(identity.key, identity.chain)], identity.ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = _stamp(folder)
        except OSError:
            return None
        if stamp == seen[0]:
            return None
        seen[0] = stamp  # one attempt (and at most one log line) per change
        try:
            fresh = configuration(read_identity(folder))
        except (OSError, TlsError) as exc:
            log.error("TLS identity in %s changed but cannot be used (%s); serving the previous one", folder, exc)
            return None
        log.info("TLS identity in %s reloaded: new connections get the new certificate", folder)
        return fresh

    return grpc.dynamic_ssl_server_credentials(configuration(initial), fetch, require_client_authentication=True)


def channel_credentials(folder: Path) -> grpc.ChannelCredentials:
    """A client's side: trust only the cluster's CA, present our certificate. gRPC checks that the server's
    certificate names the address dialled."""
    identity = read_identity(folder)
    return grpc.ssl_channel_credentials(identity.ca, identity.key, identity.chain)


def caller_name(auth_context: dict[str, list[bytes]]) -> str | None:
    """The common name of a mutual-TLS caller's certificate; None on a plaintext (loopback) channel."""
    if auth_context.get("transport_security_type") != [b"ssl"]:
        return None
    names = auth_context.get("x509_common_name") or [b""]
    return names[0].decode(errors="replace")


def identity_stamp(folder: Path) -> tuple[int, ...] | None:
    """Changes whenever the folder's files are replaced (None: not readable now)."""
    try:
        return _stamp(folder)
    except OSError:
        return None


def channel(address: str, folder: Path | None, options: list[tuple[str, int | str]] | None = None) -> grpc.aio.Channel:
    """An asyncio channel to an agent: mutual TLS with the folder's identity, plaintext with none (loopback)."""
    if folder is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, channel_credentials(folder), options=options)


def blocking_channel(address: str, folder: Path | None) -> grpc.Channel:
    """The same, for synchronous callers (benchmarks, tests)."""
    if folder is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, channel_credentials(folder))
