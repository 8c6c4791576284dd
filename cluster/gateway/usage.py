"""Usage accounting: one row per request, buffered in memory and written in batches, and the reports
`cluster usage` prints. The router flushes every FLUSH_S and on shutdown, so after a `kill -9` at most the
last FLUSH_S of rows are missing.
"""

from __future__ import annotations

import sqlite3
from dataclasses import astuple, dataclass

from cluster.gateway.keys import Key
from cluster.gateway.store import transaction

FLUSH_S = 1.0
MAX_BUFFER = 10_000  # rows held between flushes; a full buffer is flushed at once


@dataclass(frozen=True)
class UsageRow:
    at: float
    request_id: str
    key_id: str | None
    team: str | None
    model: str
    worker: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    status: int
    ttft_s: float | None
    duration_s: float
    stream: bool = False  # not stored: what the metrics read besides
    itl_s: float | None = None  # a stream's mean gap between tokens after the first

    def stored(self) -> tuple[object, ...]:
        """The columns of its row in the usage table."""
        return astuple(self)[:12]


def refused_row(at: float, request_id: str, key: Key | None, model: str, status: int) -> UsageRow:
    """A request turned away before any worker (a bad key or body, an unknown model, a limit, a full queue, the
    client gone): no tokens, no worker."""
    return UsageRow(
        at, request_id, key.id if key else None, key.team if key else None, model, None, 0, 0, 0, status, None, 0.0
    )


def write(conn: sqlite3.Connection, rows: list[UsageRow]) -> None:
    """Insert rows and note when each key was last used, in one transaction."""
    if not rows:
        return
    last_used: dict[str, float] = {}
    for row in rows:
        if row.key_id:
            last_used[row.key_id] = max(last_used.get(row.key_id, 0.0), row.at)
    with transaction(conn):
        conn.executemany(
            "INSERT INTO usage (at, request_id, key_id, team, model, worker, prompt_tokens, completion_tokens,"
            " cached_tokens, status, ttft_s, duration_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [row.stored() for row in rows],
        )
        conn.executemany(
            "UPDATE keys SET last_used = MAX(COALESCE(last_used, 0), ?) WHERE id = ?",
            [(at, key_id) for key_id, at in last_used.items()],
        )


GROUPS = {
    "day": "date(at, 'unixepoch')",
    "model": "model",
    "key": "COALESCE(key_id, '-')",
    "team": "COALESCE(team, '-')",
}


@dataclass(frozen=True)
class UsageLine:
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    errors: int


def report(conn: sqlite3.Connection, by: str, since: float, team: str | None = None) -> list[UsageLine]:
    """Totals per day, model, key or team since `since` (optionally one team's only)."""
    group = GROUPS[by]  # only our own expressions reach the SQL text
    where = "at >= ?"
    params: list[object] = [since]
    if team is not None:
        where += " AND team = ?"
        params.append(team)
    query = (
        f"SELECT {group}, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens),"
        f" SUM(status >= 400) FROM usage WHERE {where} GROUP BY 1 ORDER BY 1"
    )
    return [UsageLine(str(r[0]), *(int(v or 0) for v in r[1:])) for r in conn.execute(query, params)]
