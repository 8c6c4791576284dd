"""The team gateway: who is asking (API key → team), may they (models, rate limits, monthly quota), when do
they go (the fair admission queue), and what did they use (usage rows, reconciled limits).

Decisions are the pure parts (limits.py, queue.py); this class holds their state, the database snapshot and the
clock, and does I/O only at its edges: reading keys every REFRESH_S, writing usage rows every usage.FLUSH_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cluster.gateway import keys, store, usage
from cluster.gateway.keys import Key, Snapshot, Team
from cluster.gateway.limits import Limiter, Refused, Subject, duration
from cluster.gateway.queue import Admission, Capacity, NoCapacity, QueueFull

log = logging.getLogger(__name__)

R = TypeVar("R")
REFRESH_S = 0.5  # a revoked key or a new limit takes effect within this (and one request)
DEFAULT_MAX_TOKENS = 256  # reserved for a request that does not say (reconciled at the end)
CHARS_PER_TOKEN = 4  # prompt estimate at admission (reconciled with the engine's count at the end)


NO_KEY = (
    "You didn't provide an API key. Send it as `Authorization: Bearer KEY` (an admin creates one with "
    "`cluster keys create --team NAME`)."
)


Warm = Callable[[str, float], Awaitable[None]]


class Refusal(Exception):
    """The gateway says no: an OpenAI-shaped error with its status, code and headers (Retry-After, limits)."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass(frozen=True)
class Ask:
    """What the gateway reads of a request."""

    request_id: str
    model: str
    prompt_chars: int
    max_tokens: int | None


@dataclass(frozen=True)
class Pass:
    """An admitted request: who it counts against and what it reserved; `headers` go on the response."""

    ask: Ask
    key: Key | None
    team: str | None
    subjects: tuple[Subject, ...]
    reserved: int
    headers: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    status: int
    worker: str | None
    prompt_tokens: int | None  # None: cut short before the engine said (the admission estimate stands in)
    completion_tokens: int
    cached_tokens: int
    ttft_s: float | None
    duration_s: float  # from the same start as `ttft_s` (the request read), on the same clock


class Gateway:
    def __init__(
        self,
        db: Path | None,
        capacity: Callable[[str], Capacity],
        *,
        require_auth: bool,
        max_queue: int = 256,
        open_ok: bool = False,
        clock: Callable[[], float] = time.time,
        warm: Warm | None = None,
    ) -> None:
        """`warm(model, timeout_s)`: wait until a model no worker serves has one (an on-demand model's cold start);
        Refusal when it cannot, TimeoutError past the time."""
        self.db = db
        self.warm = warm
        self.require_auth = require_auth  # listening beyond loopback: auth even before the first key exists
        self.open_ok = open_ok  # --no-auth: never ask for a key
        self.clock = clock
        self.snapshot = Snapshot()
        self.limiter = Limiter()
        self.admission = Admission(capacity, max_queue)
        self.rows: list[usage.UsageRow] = []
        self._conn: sqlite3.Connection | None = None
        # One thread owns the database connection (sqlite3 objects stay in their thread): every call is serial.
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
        self._tasks: list[asyncio.Task[None]] = []
        self._flushing: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.db is not None:
            self._conn = await self._in_db(store.connect, self.db)
            await self.refresh()
            self._tasks.append(asyncio.create_task(self._every(usage.FLUSH_S, self.flush), name="usage flush"))
        # Also without a database: workers come and go, and the queue must hear of it.
        self._tasks.append(asyncio.create_task(self._every(REFRESH_S, self.refresh), name="gateway refresh"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()  # SIGTERM: every finished request's row is written
        finally:
            if self._conn is not None:
                await self._in_db(self._conn.close)
            self._db_thread.shutdown(wait=True)

    async def _in_db(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    async def _every(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await action()
            except Exception:  # a locked or broken database must not stop the router
                log.exception("gateway %s failed", getattr(action, "__name__", action))

    async def refresh(self) -> None:
        """Re-read keys and teams; at a new month, start the ledger from the database's totals."""
        conn, now = self._conn, self.clock()
        self.admission.dispatch_all()  # workers may have come or gone
        if conn is None:
            return
        self.snapshot = await self._in_db(keys.load_snapshot, conn)
        month = keys.month_start(now)
        if self.limiter.ledger.month != month:
            by_key, by_team = await self._in_db(keys.month_tokens, conn, now)
            ledger = self.limiter.ledger
            ledger.month = month
            ledger.used = {**{("key", k): v for k, v in by_key.items()}, **{("team", t): v for t, v in by_team.items()}}

    async def flush(self) -> None:
        rows, self.rows = self.rows, []
        if rows and self._conn is not None:
            try:
                await self._in_db(usage.write, self._conn, rows)
            except Exception:
                self.rows = (rows + self.rows)[-usage.MAX_BUFFER :]  # kept for the next try, bounded
                raise

    # -- the request path --------------------------------------------------------------------------------

    @property
    def auth_on(self) -> bool:
        return not self.open_ok and (self.require_auth or self.snapshot.people)

    def authenticate(self, authorization: str | None) -> Key | None:
        """The caller's key (None while auth is off); raises Refusal 401 for a missing or bad one."""
        if not self.auth_on:
            return None
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Refusal(401, NO_KEY, "invalid_api_key")
        key = self.snapshot.find(secret.strip())
        if key is None or not key.usable(self.clock()):
            why = "revoked" if key and key.revoked else "expired" if key else "not known"
            raise Refusal(401, f"Incorrect API key provided: the key is {why}.", "invalid_api_key")
        return key

    def check_admin(self, authorization: str | None) -> None:
        key = self.authenticate(authorization)
        if key is not None and not key.admin:
            raise Refusal(403, "This endpoint needs an admin key (`cluster keys create --admin`).", "admin_required")

    async def admit(self, ask: Ask, key: Key | None, timeout_s: float) -> Pass:
        """Check the model and the limits for the (authenticated) key, then wait for a slot. Raises Refusal,
        TimeoutError past the deadline (the caller records who was turned away: `record`)."""
        team = self.snapshot.teams.get(key.team) if key else None
        if key is not None:
            self._check_model(ask.model, key, team)
        subjects = self._subjects(key, team)
        cost = ask.prompt_chars // CHARS_PER_TOKEN + (ask.max_tokens or DEFAULT_MAX_TOKENS)
        now = self.clock()
        verdict = self.limiter.admit(list(subjects), cost, now, keys.month_end(now))
        if isinstance(verdict, Refused):
            wait = verdict.retry_after_s
            what = "Quota exceeded" if verdict.code == "insufficient_quota" else "Rate limit reached"
            raise Refusal(
                429,
                f"{what}: {verdict.limit}. Retry after {duration(wait)}.",
                verdict.code,
                {"retry-after": str(max(1, math.ceil(wait)))},
            )
        granted = Pass(ask, key, key.team if key else None, subjects, cost, verdict.headers())
        try:
            await self._acquire(ask.model, granted.team or "", team.weight if team else 1.0, cost, timeout_s)
        except Refusal as exc:  # the cold start's own refusal: the model cannot be loaded
            self._settle(granted, 0)
            exc.headers = {**exc.headers, **verdict.headers()}
            raise
        except NoCapacity:
            self._settle(granted, 0)
            raise Refusal(
                503,
                f"No ready worker serves `{ask.model}` right now; try again shortly.",
                "no_worker",
                verdict.headers(),
            ) from None
        except QueueFull:
            self._settle(granted, 0)
            raise Refusal(
                429,
                f"The queue for `{ask.model}` is full; retry shortly.",
                "queue_full",
                {"retry-after": "1", **verdict.headers()},
            ) from None
        except BaseException:  # the client left while queued, or the deadline passed
            self._settle(granted, 0)
            raise
        return granted

    async def _acquire(self, model: str, team: str, weight: float, cost: float, timeout_s: float) -> None:
        """A slot for the request; a model with no worker yet is warmed first (on-demand), within the same time."""
        started = time.monotonic()
        try:
            await self.admission.acquire(model, team, weight, cost, timeout_s)
            return
        except NoCapacity:
            if self.warm is None:
                raise
        await self.warm(model, max(timeout_s - (time.monotonic() - started), 0.001))
        await self.admission.acquire(model, team, weight, cost, max(timeout_s - (time.monotonic() - started), 0.001))

    def finish(self, granted: Pass, outcome: Outcome) -> usage.UsageRow:
        """The request ended (however): free its slot, reconcile its tokens, store its usage row (returned)."""
        self.admission.release(granted.ask.model, granted.team or "")
        prompt = outcome.prompt_tokens
        if prompt is None:
            prompt = granted.ask.prompt_chars // CHARS_PER_TOKEN
        self._settle(granted, prompt + outcome.completion_tokens)
        now = self.clock()
        row = usage.UsageRow(
            now,
            granted.ask.request_id,
            granted.key.id if granted.key else None,
            granted.team,
            granted.ask.model,
            outcome.worker,
            prompt,
            outcome.completion_tokens,
            outcome.cached_tokens,
            outcome.status,
            outcome.ttft_s,
            outcome.duration_s,
        )
        self.record(row)
        return row

    def record(self, row: usage.UsageRow) -> None:
        """Store a usage row (batched): an admitted request's, or one the admission turned away."""
        if self.db is not None:
            self.rows.append(row)
            if len(self.rows) >= usage.MAX_BUFFER and (self._flushing is None or self._flushing.done()):
                self._flushing = asyncio.get_running_loop().create_task(self.flush())

    def _settle(self, granted: Pass, used: int) -> None:
        self.limiter.settle(list(granted.subjects), granted.reserved, used, self.clock())

    def _check_model(self, model: str, key: Key, team: Team | None) -> None:
        for allowed in (key.limits.models, team.limits.models if team else None):
            if allowed is not None and model not in allowed:
                raise Refusal(403, f"This key may not use the model `{model}`.", "model_not_allowed")

    @staticmethod
    def _subjects(key: Key | None, team: Team | None) -> tuple[Subject, ...]:
        found = []
        if key is not None:
            found.append(Subject("key", key.id, key.limits.rpm, key.limits.tpm, key.limits.monthly_tokens))
        if team is not None:
            limits = team.limits
            found.append(Subject("team", team.name, limits.rpm, limits.tpm, limits.monthly_tokens))
        return tuple(found)


def refuse_open(listen: str, loopback: bool, no_auth: bool, db: Path | None) -> str | None:
    """Why a router must not start (beyond loopback, no API key, no --no-auth), or None when it may."""
    if loopback or no_auth:
        return None
    if db is not None and db.exists():
        with store.opened(db) as conn:
            if keys.key_count(conn):
                return None
    return (
        f"refusing to serve on {listen} without API keys: anyone who reaches it could use every model. "
        "Create a key first (`cluster keys create --team NAME --admin`), or start the router with --no-auth "
        "(`no_auth = true` under [router] in a hosts file) to serve it open anyway."
    )
