"""The cluster CA: what it issues (names, purposes, issuer), when an identity is current, and how files land."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cluster.bringup import certs
from cluster.pki import authority, pins
from cluster.placement.hostsfile import HostSpec
from cluster.state import records
from worker.shared import tls

NOW = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)


def _certificate(identity: bytes) -> x509.Certificate:
    return authority.certificate_of(identity)


def test_an_issued_identity_names_its_addresses_serves_and_calls_and_verifies_against_the_ca() -> None:
    ca = authority.create(NOW)
    identity = authority.issue(ca, "orchard agent h1", ("10.0.0.2", "h1"), NOW)
    key, chain = tls.split_identity(identity)
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----") and chain.startswith(b"-----BEGIN CERTIFICATE-----")
    certificate = _certificate(identity)
    certificate.verify_directly_issued_by(ca.certificate)
    assert authority.names_of(certificate) == ["10.0.0.2", "h1"]
    purposes = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(purposes) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certificate.not_valid_after_utc == NOW + dt.timedelta(days=authority.LEAF_DAYS)
    assert ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_current_only_for_this_ca_these_names_and_not_near_expiry() -> None:
    ca, other = authority.create(NOW), authority.create(NOW)
    names = ("10.0.0.2", "h1")
    held = ca.pem + authority.issue(ca, "a", names, NOW)
    assert authority.current(held, ca, names, NOW)
    assert not authority.current(b"", ca, names, NOW)  # nothing installed
    assert not authority.current(other.pem + authority.issue(other, "a", names, NOW), ca, names, NOW)
    assert not authority.current(held, ca, ("10.0.0.9",), NOW)  # the host moved
    near = NOW + dt.timedelta(days=authority.LEAF_DAYS - authority.RENEW_WITHIN_DAYS + 1)
    assert not authority.current(held, ca, names, near)


def test_identities_are_written_private_and_reissued_only_when_needed(tmp_path: Path) -> None:
    ca = authority.load_or_create(tmp_path, NOW)
    loaded = authority.load(tmp_path)
    assert loaded is not None and loaded.pem == ca.pem
    assert stat.S_IMODE(os.stat(authority.ca_folder(tmp_path) / "ca.key").st_mode) == 0o600
    folder = authority.tls_folder(tmp_path, "router")
    assert authority.ensure_identity(folder, ca, "r", ("orchard-router",), NOW)
    assert not authority.ensure_identity(folder, ca, "r", ("orchard-router",), NOW)
    assert authority.ensure_identity(folder, ca, "r", ("orchard-router",), NOW, renew=True)
    assert stat.S_IMODE(os.stat(folder / tls.IDENTITY_FILE).st_mode) == 0o600
    assert tls.read_identity(folder).ca == ca.pem
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_broken_ca_is_named_with_what_to_do(tmp_path: Path) -> None:
    authority.load_or_create(tmp_path, NOW)
    (authority.ca_folder(tmp_path) / "ca.key").write_text("garbage")
    with pytest.raises(authority.AuthorityError, match="cluster certs init"):
        authority.load(tmp_path)


def test_a_missing_identity_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(tls.TlsError, match=r"ca\.pem.*cluster certs init"):
        tls.read_identity(tmp_path)
    (tmp_path / tls.CA_FILE).write_bytes(authority.create(NOW).pem)
    (tmp_path / tls.IDENTITY_FILE).write_text("no key here")
    with pytest.raises(tls.TlsError, match="expected a private key and a certificate"):
        tls.read_identity(tmp_path)


def test_agents_are_named_for_their_address_and_name() -> None:
    assert certs.agent_names(HostSpec(address="10.0.0.2", name="studio-1")) == ("10.0.0.2", "studio-1")
    assert certs.agent_names(HostSpec(address="studio-1.lab")) == ("studio-1.lab",)


def test_expiry_rows_warn_near_the_end(tmp_path: Path) -> None:
    certs.local_identities(tmp_path)
    rows = {e.who: e for e in certs.expiries(tmp_path, [certs.LOCAL_AGENT, "h9"])}
    assert set(rows) == {"CA", "router", "local-agent", "h9"} and rows["h9"].certificate is None
    later = authority.now_utc() + dt.timedelta(days=authority.LEAF_DAYS - 10)
    assert "renew: cluster certs rotate" in rows["router"].text(later)
    assert "renew" not in rows["CA"].text(later) and rows["h9"].text(later) == "none"


def test_a_lab_agents_expiry_comes_from_its_pin_and_says_who_renews_it(tmp_path: Path) -> None:
    ca = authority.load_or_create(tmp_path, NOW)
    identity = authority.issue(ca, "a", ("10.0.0.2", "h1"), NOW, life=authority.AGENT_LIFE)
    chain = tls.split_identity(identity)[1].decode()
    with pins.editing(authority.tls_folder(tmp_path, certs.ROUTER)) as book:
        book.agents["10.0.0.2:8201"] = pins.Pin(label="h1", name=pins.new_name(), certificate=chain)
        book.agents["10.0.0.3:8201"] = pins.Pin(label="h2", name=pins.new_name(), revoked=True)
    rows = {e.who: e for e in certs.expiries(tmp_path, ["h1", "h2"])}
    assert rows["h1"].text(NOW + dt.timedelta(hours=1)) == "2026-11-30 00:00Z (2 days)"
    assert (
        rows["h1"]
        .text(NOW + dt.timedelta(hours=60))
        .endswith("(12 h) [overdue: the router renews it while it reaches the agent]")
    )
    assert rows["h2"].text(NOW).startswith("revoked")


def test_records_replace_files_atomically_and_privately(tmp_path: Path) -> None:
    path = tmp_path / "state" / "local.json"
    path.parent.mkdir()
    path.write_text("old")
    os.chmod(path, 0o644)
    records.write_private(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["local.json"]
