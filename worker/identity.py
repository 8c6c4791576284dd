"""An agent's TLS identity replaced by the router (the `Renew` call) before the current one expires.

What arrives is checked before it is kept: a private key and a certificate that belong together, issued by the
CA this agent already trusts, valid now (give or take a clock 10 minutes off), a server's leaf certificate that
keeps every name of the current one and one of its pins — so a mistaken push cannot leave the agent unreachable.
The key and certificate are then renamed over identity.pem (0600 from creation), and the agent's server
credentials (worker/shared/tls.py) present them to the next connection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from worker.shared import tls

MAX_IDENTITY_BYTES = 64 * 1024  # a key and a certificate are a few kB
CLOCK_SKEW = dt.timedelta(minutes=10)  # the head's clock may run this far ahead of ours


class IdentityError(Exception):
    """What arrived is not an identity this agent may present; the message says why."""


def replace_identity(folder: Path, pem: bytes, now: dt.datetime) -> x509.Certificate:
    """Check `pem` against the folder's CA and make it the folder's identity; the new certificate."""
    current = x509.load_pem_x509_certificate(tls.read_identity(folder).chain)
    key_pem, chain = tls.split_identity(pem)
    certificate = _checked(key_pem, chain, (folder / tls.CA_FILE).read_bytes(), now)
    _same_agent(current, certificate)
    target = folder / tls.IDENTITY_FILE
    staged = folder / f".{tls.IDENTITY_FILE}.{os.getpid()}.tmp"
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(key_pem + chain)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staged, target)  # a reader sees the old pair or the new one, never a mix
    except BaseException:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise
    return certificate


def _checked(key_pem: bytes, chain: bytes, ca_pem: bytes, now: dt.datetime) -> x509.Certificate:
    if len(key_pem) + len(chain) > MAX_IDENTITY_BYTES:
        raise IdentityError(f"an identity of {len(key_pem) + len(chain)} bytes (at most {MAX_IDENTITY_BYTES})")
    if not key_pem or not chain:
        raise IdentityError("expected a private key and a certificate (PEM)")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        certificate = x509.load_pem_x509_certificate(chain)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise IdentityError(f"unreadable: {exc}") from None
    if key.public_key() != certificate.public_key():
        raise IdentityError("the private key and the certificate do not belong together")
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise IdentityError("the certificate is not from the CA this agent trusts") from None
    if not certificate.not_valid_before_utc - CLOCK_SKEW <= now < certificate.not_valid_after_utc:
        until = certificate.not_valid_after_utc
        raise IdentityError(f"the certificate is not valid now (valid until {until:%Y-%m-%d %H:%M}Z)")
    constraints = _extension(certificate, x509.BasicConstraints)
    if constraints is None or constraints.ca:
        raise IdentityError("a CA certificate, not an agent's")
    purposes = _extension(certificate, x509.ExtendedKeyUsage)
    if purposes is None or ExtendedKeyUsageOID.SERVER_AUTH not in purposes:
        raise IdentityError("the certificate may not serve")
    return certificate


def _same_agent(current: x509.Certificate, fresh: x509.Certificate) -> None:
    """Every name the current certificate has (its address, its host name) and one of its pins, if it has any."""
    old, new = _names(current), _names(fresh)
    if missing := sorted(n for n in old - new if not n.endswith(tls.PIN_SUFFIX)):
        raise IdentityError(f"the certificate drops names this agent is reached by: {', '.join(missing)}")
    pins = {n for n in old if n.endswith(tls.PIN_SUFFIX)}
    if pins and not pins & new:
        raise IdentityError("the certificate does not carry this agent's current pin")


def _names(certificate: x509.Certificate) -> set[str]:
    alternatives = _extension(certificate, x509.SubjectAlternativeName)
    return {str(n.value) for n in alternatives} if alternatives is not None else set()


E = TypeVar("E", bound=x509.ExtensionType)


def _extension(certificate: x509.Certificate, kind: type[E]) -> E | None:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
