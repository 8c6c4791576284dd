"""An agent's TLS identity replaced by the router (the `Renew` call) before the current one expires.

What arrives is checked before it is kept: a private key and a certificate that belong together, issued by the
CA this agent already trusts, valid now. It is then renamed over identity.pem (0600 from creation), and the
agent's server credentials (proto/tls.py) present it to the next connection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from proto import tls

MAX_IDENTITY_BYTES = 64 * 1024  # a key and a certificate are a few kB


class IdentityError(Exception):
    """What arrived is not an identity this agent may present; the message says why."""


def replace_identity(folder: Path, pem: bytes, now: dt.datetime) -> x509.Certificate:
    """Check `pem` against the folder's CA and make it the folder's identity; the new certificate."""
    certificate = _checked(pem, (folder / tls.CA_FILE).read_bytes(), now)
    target = folder / tls.IDENTITY_FILE
    staged = folder / f".{tls.IDENTITY_FILE}.{os.getpid()}.tmp"
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staged, target)  # a reader sees the old pair or the new one, never a mix
    except BaseException:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise
    return certificate


def _checked(pem: bytes, ca_pem: bytes, now: dt.datetime) -> x509.Certificate:
    if len(pem) > MAX_IDENTITY_BYTES:
        raise IdentityError(f"an identity of {len(pem)} bytes (at most {MAX_IDENTITY_BYTES})")
    key_pem, chain = tls.split_identity(pem)
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
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        raise IdentityError(
            f"the certificate is not valid now (until {certificate.not_valid_after_utc:%Y-%m-%d %H:%M})"
        )
    return certificate
