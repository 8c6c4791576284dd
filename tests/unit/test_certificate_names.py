"""What an agent's certificate names: the host the router dials (no port), an IP address as an IP name."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from cluster import cli
from cluster.pki import authority
from worker.shared import tls

NOW = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)


def _alternatives(identity: bytes) -> list[x509.GeneralName]:
    certificate = authority.certificate_of(identity)
    return list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("127.0.0.1:8201", "127.0.0.1"),
        ("10.0.0.2", "10.0.0.2"),
        ("studio-1.lab:50051", "studio-1.lab"),
        ("studio-1.lab", "studio-1.lab"),
        ("[fd00::2]:8201", "fd00::2"),
        ("[fd00::2]", "fd00::2"),
        ("fd00:0:0::2", "fd00::2"),  # no brackets: every colon is the address's, there is no port
        ("orchard-router", "orchard-router"),
    ],
)
def test_an_address_names_its_host_without_the_port(address: str, host: str) -> None:
    assert authority.host_of(address) == host


@pytest.mark.parametrize("address", ["studio-1:http", "[fd00::2", "[fd00::2]:x", "[studio-1]:80", ":8201", ""])
def test_a_malformed_address_is_refused_naming_it(address: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        authority.host_of(address)


def test_an_address_with_a_port_is_issued_as_an_ip_name_for_its_host() -> None:
    ca = authority.create(NOW)
    identity = authority.issue(ca, "orchard agent mac1", ("127.0.0.1:8201", "[fd00::2]:8201", "mac1"), NOW)
    assert _alternatives(identity) == [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("fd00::2")),
        x509.DNSName("mac1"),
    ]


def test_the_same_host_with_and_without_a_port_is_named_once_and_counts_as_current() -> None:
    ca = authority.create(NOW)
    identity = authority.issue(ca, "a", ("10.0.0.2:50051", "10.0.0.2"), NOW)
    assert authority.names_of(authority.certificate_of(identity)) == ["10.0.0.2"]
    assert authority.current(ca.pem + identity, ca, ("10.0.0.2:50051",), NOW)


def test_certs_issue_names_the_host_of_an_address_given_with_its_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHARD_HOME", str(tmp_path / "home"))
    out = tmp_path / "mac1"
    with pytest.raises(SystemExit) as done:
        cli.main(["certs", "issue", "mac1", "--address", "127.0.0.1:8201", "--out", str(out)])
    assert done.value.code == 0
    assert _alternatives(tls.read_identity(out).chain) == [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("mac1"),
    ]


def test_certs_issue_refuses_a_malformed_address_before_issuing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCHARD_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as done:
        cli.main(["certs", "issue", "mac1", "--address", "mac1:http", "--out", str(tmp_path / "mac1")])
    assert done.value.code == 2
    assert "'mac1:http': expected host:port" in capsys.readouterr().err
    assert not (tmp_path / "mac1").exists() and not (tmp_path / "home").exists()
