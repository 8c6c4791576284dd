"""Short-lived agent certificates: when one is due, what follows it, how the pin record is kept, and what an
agent accepts as its new identity."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest

from cluster.pki import authority, pins
from cluster.router.renewal import RETRY_S, due_agents, next_round_in, successor
from worker.identity import IdentityError, replace_identity
from worker.shared import tls

NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def _pin(ca: authority.Authority, issued_at: dt.datetime, life: dt.timedelta = authority.AGENT_LIFE) -> pins.Pin:
    name = pins.new_name()
    identity = authority.issue(ca, "orchard agent h1", ("10.0.0.2", "h1", name), issued_at, life=life)
    return pins.Pin(label="h1", name=name, certificate=tls.split_identity(identity)[1].decode())


@pytest.mark.parametrize(
    ("life", "age", "due"),
    [
        (authority.AGENT_LIFE, 35 * HOUR, False),  # a 3-day certificate: renewed after half its life
        (authority.AGENT_LIFE, 37 * HOUR, True),
        (authority.AGENT_LIFE, 80 * HOUR, True),  # expired
        (dt.timedelta(days=365), dt.timedelta(days=334), False),  # a year-long one: in its last 30 days
        (dt.timedelta(days=365), dt.timedelta(days=336), True),
    ],
)
def test_a_certificate_is_due_at_half_its_life_or_30_days_before_its_end(
    life: dt.timedelta, age: dt.timedelta, due: bool
) -> None:
    ca = authority.create(NOW)
    certificate = authority.certificate_of(authority.issue(ca, "a", ("h1",), NOW, life=life))
    assert authority.due(certificate, NOW + age) is due


def test_due_agents_skips_revoked_and_unreadable_ones() -> None:
    ca = authority.create(NOW)
    book = pins.Pins(
        agents={
            "10.0.0.2:8201": _pin(ca, NOW - 40 * HOUR),
            "10.0.0.3:8201": _pin(ca, NOW - HOUR),
            "10.0.0.4:8201": _pin(ca, NOW - 40 * HOUR).model_copy(update={"revoked": True}),
            "10.0.0.5:8201": pins.Pin(label="h5", name=pins.new_name(), certificate="garbage"),
        }
    )
    assert due_agents(book, NOW) == ["10.0.0.2:8201"]


def test_the_successor_keeps_names_and_common_name_and_carries_the_old_pin_and_the_new() -> None:
    ca = authority.create(NOW)
    held, fresh = _pin(ca, NOW - 40 * HOUR), pins.new_name()
    certificate = authority.certificate_of(successor(ca, held, fresh, NOW, authority.AGENT_LIFE))
    assert authority.names_of(certificate) == ["10.0.0.2", "h1", held.name, fresh]
    assert certificate.subject.rfc4514_string() == "CN=orchard agent h1"
    assert certificate.not_valid_after_utc == NOW + authority.AGENT_LIFE
    certificate.verify_directly_issued_by(ca.certificate)


def test_the_pin_record_is_private_locked_and_written_only_when_it_changed(tmp_path: Path) -> None:
    with pins.editing(tmp_path) as book:
        book.agents["10.0.0.2:8201"] = pins.Pin(label="h1", name=pins.new_name())
    assert stat.S_IMODE(os.stat(pins.path(tmp_path)).st_mode) == 0o600
    assert pins.read(tmp_path).by_label("h1") is not None and pins.read(tmp_path).by_label("h9") is None
    assert pins.read(tmp_path).agents["10.0.0.2:8201"].dialled.endswith(pins.SUFFIX)
    before = pins.stamp(tmp_path)
    with pins.editing(tmp_path):
        pass
    assert pins.stamp(tmp_path) == before  # the router re-dials when the file changes: unchanged, untouched
    held = pins.acquire(tmp_path, "10.0.0.2:8201")
    assert held is not None and pins.acquire(tmp_path, "10.0.0.2:8201", wait=False) is None  # the router skips it
    other = pins.acquire(tmp_path, "10.0.0.3:8201", wait=False)  # another agent's lock is its own
    assert other is not None
    held.close()
    other.close()
    again = pins.acquire(tmp_path, "10.0.0.2:8201", wait=False)
    assert again is not None
    again.close()
    with pins.editing(tmp_path) as book:
        book.agents["10.0.0.9:8201"] = pins.Pin(label="h9", name=pins.new_name())
    assert pins.forget_others(tmp_path, {"10.0.0.2:8201"}) == ["h9"]  # a host that left the lab
    assert list(pins.read(tmp_path).agents) == ["10.0.0.2:8201"]
    pins.path(tmp_path).write_text('{"agents": 3}')
    with pytest.raises(pins.PinsError, match="move it away and run `cluster up`"):
        pins.read(tmp_path)  # never "no pins", which would accept any certificate naming the address
    assert pins.Pin(label="h1", name="x", revoked=True).dialled == pins.REVOKED


def _agent_folder(tmp_path: Path, ca: authority.Authority, names: tuple[str, ...]) -> Path:
    authority.write_identity(tmp_path, ca, authority.issue(ca, "a", names, NOW))
    return tmp_path


def test_an_agent_takes_a_new_identity_only_from_its_own_ca_for_itself(tmp_path: Path) -> None:
    ca, other = authority.create(NOW), authority.create(NOW, "someone else's CA")
    folder = _agent_folder(tmp_path, ca, ("h1", "p1.pin.orchard.invalid"))
    fresh = authority.issue(ca, "a", ("h1", "p1.pin.orchard.invalid", "p2.pin.orchard.invalid"), NOW)
    key, chain = tls.split_identity(fresh)
    stranger_key = tls.split_identity(authority.issue(ca, "a", ("h1",), NOW))[0]
    from cryptography.hazmat.primitives import serialization

    ca_key = ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    expired = authority.issue(ca, "a", ("h1", "p1.pin.orchard.invalid"), NOW - 4 * 24 * HOUR, life=authority.AGENT_LIFE)
    refused = {
        "another CA": (authority.issue(other, "a", ("h1", "p1.pin.orchard.invalid"), NOW), "not from the CA"),
        "a key that is not the certificate's": (stranger_key + chain, "do not belong together"),
        "no key": (chain, "expected a private key and a certificate"),
        "expired": (expired, "not valid now"),
        "too big": (fresh + b" " * 70_000, "at most"),
        "the CA itself": (ca_key + ca.pem, "a CA certificate"),
        "another host": (authority.issue(ca, "a", ("h2", "p1.pin.orchard.invalid"), NOW), "drops names .*h1"),
        "not its pin": (authority.issue(ca, "a", ("h1", "p9.pin.orchard.invalid"), NOW), "current pin"),
    }
    installed = (folder / tls.IDENTITY_FILE).read_bytes()
    for why, (pem, message) in refused.items():
        with pytest.raises(IdentityError, match=message):
            replace_identity(folder, pem, NOW)
        assert (folder / tls.IDENTITY_FILE).read_bytes() == installed, why
    ahead = authority.issue(ca, "a", ("h1", "p1.pin.orchard.invalid"), NOW + dt.timedelta(minutes=8))
    replace_identity(folder, ahead, NOW)  # the head's clock a few minutes ahead of the agent's
    assert authority.names_of(replace_identity(folder, b"junk before " + fresh, NOW))[-1] == "p2.pin.orchard.invalid"
    assert (folder / tls.IDENTITY_FILE).read_bytes() == key + chain  # only the key and the certificate are kept
    assert stat.S_IMODE(os.stat(folder / tls.IDENTITY_FILE).st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == [tls.CA_FILE, tls.IDENTITY_FILE]


def test_the_next_round_comes_when_the_next_certificate_falls_due() -> None:
    ca = authority.create(NOW)
    fresh = pins.Pins(agents={"10.0.0.2:8201": _pin(ca, NOW - 30 * HOUR)})  # due at 36 h: in 6 h
    assert next_round_in(fresh, NOW, every_s=600) == 600
    due_at = authority.renew_at(authority.certificate_of(fresh.agents["10.0.0.2:8201"].certificate.encode()))
    assert next_round_in(fresh, due_at - dt.timedelta(seconds=60), every_s=600) == 61
    late = pins.Pins(agents={**fresh.agents, "10.0.0.3:8201": _pin(ca, NOW - 40 * HOUR)})  # due, unreachable
    assert next_round_in(late, NOW, every_s=600) == RETRY_S
    assert next_round_in(pins.Pins(), NOW, every_s=600) == 600
