"""Teams and API keys: creating, listing, updating and revoking them (the CLI), and the snapshot the router
reads. A key's secret is shown once and never stored: the database holds its SHA-256 (a secret of 192 random
bits needs no slow hash), and the router compares hashes in constant time.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster.gateway import store
from cluster.gateway.store import transaction

SECRET_PREFIX = "sk-orch-"
# The head's own admin key (cluster status, waiting for workers, `cluster up --ask`), kept 0600 beside the
# database. It does not switch auth on: a local cluster stays open until a person creates a key.
OPERATOR_TEAM = "orchard-operator"


class KeyError_(Exception):
    """A key operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class Limits:
    """None means no limit of that kind; `models` None means every model."""

    rpm: int | None = None
    tpm: int | None = None
    monthly_tokens: int | None = None
    models: frozenset[str] | None = None


@dataclass(frozen=True)
class Team:
    name: str
    limits: Limits = Limits()
    weight: float = 1.0


@dataclass(frozen=True)
class Key:
    id: str
    hash: str
    team: str
    limits: Limits = Limits()
    admin: bool = False
    expires: float | None = None
    revoked: float | None = None
    created: float = 0.0
    last_used: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or now < self.expires)


@dataclass(frozen=True)
class Snapshot:
    """Everything the router needs to authenticate and limit, read in one go (it refreshes every 0.5 s)."""

    keys: dict[str, Key] = field(default_factory=dict)  # by hash
    teams: dict[str, Team] = field(default_factory=dict)
    # Any key made by a person, even a revoked one (revoking the last key must not open the endpoint again).
    people: bool = False

    def find(self, secret: str) -> Key | None:
        digest = hash_secret(secret)
        key = self.keys.get(digest)
        return key if key is not None and hmac.compare_digest(key.hash, digest) else None


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(24)  # 192 random bits


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _models_text(models: frozenset[str] | None) -> str | None:
    return ",".join(sorted(models)) if models is not None else None


def _models_of(text: str | None) -> frozenset[str] | None:
    return frozenset(m for m in text.split(",") if m) if text is not None else None


def _limits(row: sqlite3.Row) -> Limits:
    return Limits(row["rpm"], row["tpm"], row["monthly_tokens"], _models_of(row["models"]))


def ensure_team(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("INSERT OR IGNORE INTO teams (name, created) VALUES (?, ?)", (name, time.time()))


def set_team(conn: sqlite3.Connection, name: str, changes: dict[str, object]) -> None:
    """Create the team if need be and apply `changes` (columns rpm, tpm, monthly_tokens, models, weight)."""
    with transaction(conn):
        ensure_team(conn, name)
        _update(conn, "teams", "name", name, changes)


def create_key(
    conn: sqlite3.Connection,
    team: str,
    limits: Limits,
    *,
    admin: bool,
    expires: float | None,
    weight: float | None = None,
) -> tuple[Key, str]:
    """A new key for `team` (created if new); returns the key and its secret, which is never stored."""
    secret = new_secret()
    key = Key(
        id="key_" + secrets.token_hex(6),
        hash=hash_secret(secret),
        team=team,
        limits=limits,
        admin=admin,
        expires=expires,
        created=time.time(),
    )
    with transaction(conn):
        ensure_team(conn, team)
        if weight is not None:
            _update(conn, "teams", "name", team, {"weight": weight})
        conn.execute(
            "INSERT INTO keys (id, hash, team, rpm, tpm, monthly_tokens, models, admin, expires, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key.id,
                key.hash,
                team,
                limits.rpm,
                limits.tpm,
                limits.monthly_tokens,
                _models_text(limits.models),
                int(admin),
                expires,
                key.created,
            ),
        )
    return key, secret


def update_key(conn: sqlite3.Connection, key_id: str, changes: dict[str, object]) -> None:
    with transaction(conn):
        _require_key(conn, key_id)
        _update(conn, "keys", "id", key_id, changes)


def revoke_key(conn: sqlite3.Connection, key_id: str) -> None:
    with transaction(conn):
        _require_key(conn, key_id)
        conn.execute("UPDATE keys SET revoked = COALESCE(revoked, ?) WHERE id = ?", (time.time(), key_id))


def _require_key(conn: sqlite3.Connection, key_id: str) -> None:
    if conn.execute("SELECT 1 FROM keys WHERE id = ?", (key_id,)).fetchone() is None:
        raise KeyError_(f"no key with id {key_id!r} (see: cluster keys list)")


_COLUMNS = {"rpm", "tpm", "monthly_tokens", "models", "weight", "admin", "expires"}


def _update(conn: sqlite3.Connection, table: str, id_column: str, ident: str, changes: dict[str, object]) -> None:
    for column, value in changes.items():
        if column not in _COLUMNS:  # never format an unchecked name into SQL
            raise ValueError(f"unknown column {column!r}")
        if column == "models" and isinstance(value, frozenset):
            value = _models_text(value)
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {id_column} = ?", (value, ident))


def load_snapshot(conn: sqlite3.Connection) -> Snapshot:
    teams = {row["name"]: Team(row["name"], _limits(row), row["weight"]) for row in conn.execute("SELECT * FROM teams")}
    keys = {
        row["hash"]: Key(
            row["id"],
            row["hash"],
            row["team"],
            _limits(row),
            bool(row["admin"]),
            row["expires"],
            row["revoked"],
            row["created"],
            row["last_used"],
        )
        for row in conn.execute("SELECT * FROM keys")
    }
    return Snapshot(keys, teams, any(key.team != OPERATOR_TEAM for key in keys.values()))


def key_count(conn: sqlite3.Connection) -> int:
    """Usable keys made by people (the operator's own key does not count)."""
    query = "SELECT COUNT(*) FROM keys WHERE revoked IS NULL AND team != ?"
    return int(conn.execute(query, (OPERATOR_TEAM,)).fetchone()[0])


def operator_secret(conn: sqlite3.Connection, path: Path) -> str:
    """The head's admin secret from `path` (0600), made on first use."""
    if path.exists():
        return path.read_text().strip()
    _, secret = create_key(conn, OPERATOR_TEAM, Limits(), admin=True, expires=None)
    staging = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(staging, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    staging.replace(path)
    return secret


def month_start(now: float) -> float:
    """00:00 UTC on the first of this month: monthly quotas reset then."""
    tm = time.gmtime(now)
    return float(calendar.timegm((tm.tm_year, tm.tm_mon, 1, 0, 0, 0)))


def month_end(now: float) -> float:
    tm = time.gmtime(now)
    year, month = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def month_tokens(conn: sqlite3.Connection, now: float) -> tuple[dict[str, int], dict[str, int]]:
    """Tokens used this month, by key id and by team."""
    since = month_start(now)
    query = "SELECT {0}, SUM(prompt_tokens + completion_tokens) FROM usage WHERE at >= ? GROUP BY {0}"
    by_key = {r[0]: int(r[1]) for r in conn.execute(query.format("key_id"), (since,)) if r[0]}
    by_team = {r[0]: int(r[1]) for r in conn.execute(query.format("team"), (since,)) if r[0]}
    return by_key, by_team


def operator_headers(home: Path) -> dict[str, str]:
    """Headers that let the head's own tools (status, waiting for workers, --ask) past the gateway."""
    with store.opened(store.db_path(home)) as conn:
        secret = operator_secret(conn, store.operator_key_path(home))
    return {"authorization": f"Bearer {secret}"}
