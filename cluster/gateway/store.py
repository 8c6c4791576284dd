"""The gateway's SQLite database (`~/.orchard/gateway.db`): teams, API keys (hashed) and usage rows.

One file, mode 0600, WAL (the router reads while the CLI writes). The schema is versioned: `MIGRATIONS[i]`
takes a database from version i to i+1 (`PRAGMA user_version`), and opening runs what is missing, so a database
made by an older Orchard upgrades in place. Every call is blocking; the router runs them in a thread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

MIGRATIONS: tuple[str, ...] = (
    # 1: teams and keys.
    """
    CREATE TABLE teams (
        name TEXT PRIMARY KEY,
        rpm INTEGER, tpm INTEGER, monthly_tokens INTEGER, models TEXT,
        weight REAL NOT NULL DEFAULT 1.0,
        created REAL NOT NULL
    );
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        team TEXT NOT NULL REFERENCES teams(name),
        rpm INTEGER, tpm INTEGER, monthly_tokens INTEGER, models TEXT,
        admin INTEGER NOT NULL DEFAULT 0,
        expires REAL, revoked REAL,
        created REAL NOT NULL
    );
    """,
    # 2: usage accounting, and when each key was last used.
    """
    ALTER TABLE keys ADD COLUMN last_used REAL;
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        request_id TEXT NOT NULL,
        key_id TEXT, team TEXT, model TEXT NOT NULL, worker TEXT,
        prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
        status INTEGER NOT NULL, ttft_s REAL, duration_s REAL NOT NULL
    );
    CREATE INDEX usage_at ON usage(at);
    CREATE INDEX usage_key_at ON usage(key_id, at);
    CREATE INDEX usage_team_at ON usage(team, at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def db_path(home: Path) -> Path:
    return home / "gateway.db"


def operator_key_path(home: Path) -> Path:
    return home / "operator.key"


@contextlib.contextmanager
def opened(db: Path) -> Iterator[sqlite3.Connection]:
    """The database at `db`, connected and migrated, closed afterwards (for the CLI and one-off reads)."""
    with contextlib.closing(connect(db)) as conn:
        yield conn


def connect(path: Path, *, upgrade_to: int = SCHEMA_VERSION) -> sqlite3.Connection:
    """Open (creating it 0600 if need be) and migrate up to `upgrade_to`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # never world-readable, not even for a moment
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)  # autocommit; transactions are explicit
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=10000")
    _with_retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn, upgrade_to)
    return conn


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Run the migrations between the database's version and `target`; returns the version reached."""
    while True:
        with transaction(conn):  # the version is read under the write lock: two processes cannot both migrate
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"gateway.db has schema {version}, newer than this Orchard ({SCHEMA_VERSION})")
            if version >= target:
                return version
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")


def _with_retry(action: Callable[[], object], deadline_s: float = 10.0) -> None:
    """Switching a new file to WAL takes a lock SQLite's busy handler does not wait for: retry, bounded."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > end:
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
