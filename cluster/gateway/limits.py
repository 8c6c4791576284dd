"""Rate limits and quotas, pure over their state: token buckets for requests and tokens per minute, and a
ledger of tokens used and reserved this month. The gateway owns the state and the clock; nothing here sleeps.

A bucket of capacity N per minute refills N/60 per second (so a burst of N, then N per minute). Tokens are
reserved at admission (a prompt estimate plus max_tokens) and reconciled with the engine's count at the end.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

MAX_BUCKETS = 100_000  # keys x kinds; the least recently used go first beyond this


@dataclass
class Bucket:
    capacity: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(now - self.stamp, 0.0) * self.capacity / 60.0)
        self.stamp = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` fits (after refill)."""
        missing = min(amount, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity

    def reset_s(self) -> float:
        """Seconds until the bucket is full again (OpenAI's x-ratelimit-reset-*)."""
        return max(self.capacity - self.level, 0.0) * 60.0 / self.capacity


@dataclass(frozen=True)
class Subject:
    """Who a limit applies to: a key or a team, with its limits per minute and per month."""

    scope: str  # "key" | "team"
    name: str
    rpm: int | None
    tpm: int | None
    monthly_tokens: int | None


@dataclass(frozen=True)
class Refused:
    limit: str  # e.g. "requests per minute (rpm) of team 'ml'"
    retry_after_s: float
    code: str = "rate_limit_exceeded"  # OpenAI's; a spent monthly quota is "insufficient_quota"


@dataclass(frozen=True)
class Headroom:
    """What the rate-limit headers report after an admission: the tightest limit of each kind."""

    requests: tuple[int, int, float] | None = None  # (limit, remaining, reset seconds)
    tokens: tuple[int, int, float] | None = None

    def headers(self) -> dict[str, str]:
        found = {}
        for kind, values in (("requests", self.requests), ("tokens", self.tokens)):
            if values is not None:
                limit, remaining, reset = values
                found[f"x-ratelimit-limit-{kind}"] = str(limit)
                found[f"x-ratelimit-remaining-{kind}"] = str(max(remaining, 0))
                found[f"x-ratelimit-reset-{kind}"] = duration(reset)
        return found


def duration(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `250ms`."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass
class Ledger:
    """Tokens used (engine counts) and reserved (requests in flight) this month, per key and per team."""

    month: float = 0.0  # the month these counts belong to (its first second)
    used: dict[tuple[str, str], int] = field(default_factory=dict)
    reserved: dict[tuple[str, str], int] = field(default_factory=dict)

    def spent(self, subject: Subject) -> int:
        ident = (subject.scope, subject.name)
        return self.used.get(ident, 0) + self.reserved.get(ident, 0)


class Limiter:
    """Buckets per subject and kind (bounded LRU) plus the month's ledger."""

    def __init__(self) -> None:
        self.buckets: OrderedDict[tuple[str, str, str], Bucket] = OrderedDict()
        self.ledger = Ledger()

    def _bucket(self, subject: Subject, kind: str, capacity: int, now: float) -> Bucket:
        ident = (subject.scope, subject.name, kind)
        bucket = self.buckets.get(ident)
        if bucket is None or bucket.capacity != capacity:  # a changed limit starts full at its new size
            bucket = Bucket(float(capacity), float(capacity), now)
            self.buckets[ident] = bucket
        self.buckets.move_to_end(ident)
        while len(self.buckets) > MAX_BUCKETS:
            self.buckets.popitem(last=False)
        bucket.refill(now)
        return bucket

    def admit(self, subjects: list[Subject], tokens: int, now: float, month_end: float) -> Refused | Headroom:
        """Take one request and `tokens` from every subject's buckets and reserve them for the month, or
        refuse naming the first limit that does not fit (nothing is taken then)."""
        takes: list[tuple[Bucket, float]] = []
        for subject in subjects:
            for kind, limit, amount in (("requests", subject.rpm, 1.0), ("tokens", subject.tpm, float(tokens))):
                if limit is None:
                    continue
                bucket = self._bucket(subject, kind, limit, now)
                if wait := bucket.wait_s(amount):
                    short = "rpm" if kind == "requests" else "tpm"
                    return Refused(f"{kind} per minute ({short}) of {subject.scope} '{subject.name}': {limit}", wait)
                takes.append((bucket, min(amount, bucket.capacity)))
            quota = subject.monthly_tokens
            if quota is not None and self.ledger.spent(subject) + tokens > quota:
                what = f"monthly token quota of {subject.scope} '{subject.name}': {quota}"
                return Refused(what, month_end - now, "insufficient_quota")
        for bucket, amount in takes:
            bucket.level -= amount
        for subject in subjects:
            ident = (subject.scope, subject.name)
            self.ledger.reserved[ident] = self.ledger.reserved.get(ident, 0) + tokens
        return self._headroom(subjects, now)

    def settle(self, subjects: list[Subject], reserved: int, used: int, now: float) -> None:
        """A request ended having used `used` tokens of the `reserved`: give back (or take) the difference."""
        for subject in subjects:
            ident = (subject.scope, subject.name)
            self.ledger.reserved[ident] = max(self.ledger.reserved.get(ident, 0) - reserved, 0)
            self.ledger.used[ident] = self.ledger.used.get(ident, 0) + used
            if subject.tpm is not None:
                bucket = self._bucket(subject, "tokens", subject.tpm, now)
                taken = min(reserved, bucket.capacity)  # what admit took (a reservation is capped at the bucket)
                bucket.level = min(bucket.capacity, bucket.level + taken - used)

    def _headroom(self, subjects: list[Subject], now: float) -> Headroom:
        def tightest(kind: str, attr: str) -> tuple[int, int, float] | None:
            found = None
            for subject in subjects:
                limit = getattr(subject, attr)
                if limit is None:
                    continue
                bucket = self._bucket(subject, kind, limit, now)
                entry = (limit, math.floor(bucket.level), bucket.reset_s())
                if found is None or entry[1] < found[1]:
                    found = entry
            return found

        return Headroom(tightest("requests", "rpm"), tightest("tokens", "tpm"))
