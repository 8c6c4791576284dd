"""The cluster's certificate authority, on the head: it signs one certificate per agent (named for the address the
router dials), one client certificate for the router, and, for labs without their own, the endpoint's.

    ~/.orchard/ca/ca.key            the CA's private key (0600; never leaves the head)
    ~/.orchard/ca/ca.pem            the CA's certificate (what every peer trusts; clients trust it for the endpoint)
    ~/.orchard/tls/router/          the router's client identity (worker/shared/tls.py's folder)
    ~/.orchard/tls/local-agent/     the local cluster's agent
    ~/.orchard/tls/router/pins.json which certificate the router accepts from each lab agent (cluster/pki/pins.py)
    ~/.orchard/tls/endpoint/        the endpoint's certificate and key, when the CA issued them

Keys are EC P-256 (fast handshakes, small files). Issuing is pure over the CA and the names; files are written
atomically, 0600.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster.state import records
from worker.shared import tls
from worker.shared.tls import CA_FILE, IDENTITY_FILE

CA_DAYS = 3650
LEAF_DAYS = 365  # the router's, the endpoint's and the local agent's: they live on the head, beside the CA's key
AGENT_LIFE = dt.timedelta(days=3)  # a lab agent's: the router renews it at half its life, so a leaked key dies
RENEW_WITHIN_DAYS = 30  # a long-lived certificate is renewed this close to expiry; a short one at half its life
ROUTER_NAME = tls.ROUTER_NAME


class AuthorityError(Exception):
    """The CA's files are unusable; the message names the file."""


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def create(now: dt.datetime, name: str = "Orchard cluster CA") -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    certificate = (
        _builder(subject, subject, key.public_key(), now, dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, certificate)


def issue(
    authority: Authority,
    name: str,
    names: tuple[str, ...],
    now: dt.datetime,
    life: dt.timedelta = dt.timedelta(days=LEAF_DAYS),
    client: bool = True,
) -> bytes:
    """One identity file (private key, then certificate): `name` is its common name, `names` its subject
    alternative names (IP addresses and host names; an address's port is dropped, see host_of). It serves, and
    with `client` it calls too: an agent is a server to the router and a client to its shard group's other
    agents; the endpoint only serves."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])]
    purposes = x509.ExtendedKeyUsage(usages)
    builder = (
        _builder(subject, authority.certificate.subject, key.public_key(), now, life)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(purposes, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False)
    )
    if names:
        hosts = dict.fromkeys(host_of(n) for n in names)  # "10.0.0.2:8201" and "10.0.0.2" are one name
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
    certificate = builder.sign(authority.key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem + certificate.public_bytes(serialization.Encoding.PEM)


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, now: dt.datetime, life: dt.timedelta
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # a peer whose clock is a little behind
        .not_valid_after(now + life)
    )


def host_of(address: str) -> str:
    """The host an address names, as a certificate names it: without a port ("h1:8201", "[fd00::2]:8201") or
    brackets, an IP address in its canonical form. ValueError (naming the address) when malformed."""
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or not (rest == "" or _PORT.fullmatch(rest)) or not _is_ip(host):
            raise ValueError(f"{address!r}: expected [IPv6 address] or [IPv6 address]:port")
    elif address.count(":") == 1:  # more than one: an IPv6 address without brackets, so without a port
        host, _, port = address.partition(":")
        if not host or not _PORT.fullmatch(f":{port}"):
            raise ValueError(f"{address!r}: expected host:port with a numeric port")
    else:
        host = address
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{address!r}: expected a host name or an IP address")
    return str(ipaddress.ip_address(host)) if _is_ip(host) else host


_PORT = re.compile(r":[0-9]{1,5}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _general_name(name: str) -> x509.GeneralName:
    """An IP address becomes an IP name (what gRPC matches a dialled IP against), anything else a DNS name."""
    host = host_of(name)
    return x509.IPAddress(ipaddress.ip_address(host)) if _is_ip(host) else x509.DNSName(host)


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def certificate_of(pem: bytes) -> x509.Certificate:
    """The (first) certificate in a PEM file or identity file."""
    start = pem.find(b"-----BEGIN CERTIFICATE-----")
    return x509.load_pem_x509_certificate(pem[start:] if start >= 0 else pem)


def renew_at(certificate: x509.Certificate) -> dt.datetime:
    """When it is due: at half of its life (a short-lived one) or RENEW_WITHIN_DAYS before its end."""
    life = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    return certificate.not_valid_after_utc - min(life / 2, dt.timedelta(days=RENEW_WITHIN_DAYS))


def due(certificate: x509.Certificate, now: dt.datetime) -> bool:
    return now > renew_at(certificate)


# -- files on the head ---------------------------------------------------------------------------------------


def ca_folder(home: Path) -> Path:
    return home / "ca"


def tls_folder(home: Path, who: str) -> Path:
    """A process's TLS folder on the head: "router", "local-agent" or "endpoint"."""
    return home / "tls" / who


def load(home: Path) -> Authority | None:
    return load_folder(ca_folder(home))


def load_folder(folder: Path) -> Authority | None:
    """The CA in its folder (ca.key, ca.pem); None if neither exists."""
    key_path, cert_path = folder / "ca.key", folder / CA_FILE
    if not key_path.exists() and not cert_path.exists():
        return None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise AuthorityError(
            f"{folder}: the cluster CA cannot be read ({exc}); move the folder away "
            "and run `cluster certs init` (every agent then needs `cluster up` again)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AuthorityError(f"{key_path}: not an EC private key")
    if key.public_key() != certificate.public_key():
        raise AuthorityError(f"{folder}: ca.key and ca.pem do not belong together")
    return Authority(key, certificate)


def load_or_create(home: Path, now: dt.datetime) -> Authority:
    """The CA, created under a lock the first time: two commands at once (`cluster up`, `cluster certs issue`)
    must not make two CAs and keep one's key with the other's certificate."""
    ca_folder(home).mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(ca_folder(home) / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        authority = load(home)
        if authority is None:
            authority = create(now)
            key_pem = authority.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            records.write_private(ca_folder(home) / "ca.key", key_pem)
            records.write_private(ca_folder(home) / CA_FILE, authority.pem, mode=0o644)
    return authority


def write_identity(folder: Path, authority: Authority, identity: bytes) -> None:
    """A process's TLS folder: the CA first, then the identity (a reader that sees the new identity trusts its
    issuer)."""
    records.write_private(folder / CA_FILE, authority.pem, mode=0o644)
    records.write_private(folder / IDENTITY_FILE, identity)


def ensure_identity(
    folder: Path,
    authority: Authority,
    name: str,
    names: tuple[str, ...],
    now: dt.datetime,
    renew: bool = False,
    client: bool = True,
) -> bool:
    """Issue into the folder unless it holds a current identity from this CA for these names; True if issued."""
    try:
        installed = (folder / CA_FILE).read_bytes() + (folder / IDENTITY_FILE).read_bytes()
    except OSError:
        installed = b""
    if not renew and current(installed, authority, names, now):
        return False
    write_identity(folder, authority, issue(authority, name, names, now, client=client))
    return True


def current(installed: bytes, authority: Authority, names: tuple[str, ...], now: dt.datetime) -> bool:
    """Whether what a peer holds (its ca.pem, then its certificate, as PEM) is this CA's, for these names, and
    not near expiry: nothing to issue."""
    blocks = [m.group(0) for m in _PEM_CERT.finditer(installed)]
    if len(blocks) < 2 or blocks[0].strip() != authority.pem.strip():
        return False
    try:
        certificate = x509.load_pem_x509_certificate(blocks[1])
    except ValueError:
        return False
    return (
        certificate.issuer == authority.certificate.subject
        and not due(certificate, now)
        and {host_of(n) for n in names} <= set(names_of(certificate))
    )


def names_of(certificate: x509.Certificate) -> list[str]:
    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in alternatives]


def local_names() -> tuple[str, ...]:
    """What a client on this machine dials: the local cluster's agent and the router's endpoint."""
    return ("127.0.0.1", "localhost", "::1")


def pinned_endpoint(home: Path) -> Path:
    """A copy of the operator's endpoint certificate chain (public), which the head's own commands trust."""
    return home / "tls" / "operator-endpoint.pem"


def trust(home: Path) -> ssl.SSLContext:
    """What the head's own commands trust when they call their own router's endpoint: the system's CAs, the
    cluster's CA, and an operator's certificate as given. They dial it by a local address the operator's
    certificate need not name, so the name is not checked; the certificate is."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # an operator's chain is trusted as it is
    for path in (ca_folder(home) / CA_FILE, pinned_endpoint(home)):
        if path.exists():
            context.load_verify_locations(cafile=str(path))
    return context


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
