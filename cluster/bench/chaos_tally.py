"""The chaos benchmark's arithmetic, pure functions over what a run recorded (cluster/bench/chaos.py drives it):
every request's record, every fault's window and the router's retry counter sampled over time. Which fault a
request belongs to, how many retries each window saw, when a host serves again, one row per fault, the table.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.table import Table

from cluster.router.rows import WorkerRow

CALM = "between faults"
RETRIES = "orchard_retries_total"  # cluster/router/metrics.py, by model
Outcome = Literal["ok", "refused", "error_event", "cut", "hung"]


@dataclass(frozen=True)
class RequestRecord:
    started: float  # time.monotonic()
    ended: float
    outcome: Outcome
    worker: str = ""  # the x-orchard-worker header ("" without an answer)
    status: int = 0  # HTTP status (0: no answer at all)
    first_byte: float = 0.0  # when the answer began (0: it never did)


@dataclass(frozen=True)
class FaultWindow:
    fault: str
    host: str  # "" for the router
    start: float
    end: float  # when the fault was lifted (== start for a kill)
    until: float  # end + recovery, or when waiting for it gave up (after a repair)
    recovery_s: float | None  # until healthy and it served a request started after `end`
    note: str = ""
    ready_s: float | None = None  # until the router listed it healthy again (ready, breaker closed, not draining)


@dataclass(frozen=True)
class RetrySample:
    """The router's retry counter (every model's summed) as one router process reported it at `at`."""

    at: float  # time.monotonic()
    router_pid: int
    value: float


@dataclass(frozen=True)
class TallyRow:
    fault: str
    host: str
    sent: int
    succeeded: int
    retried: int | None  # None: no router answered /metrics in the window
    refused: int
    error_event: int
    cut: int
    hung: int
    slowest_s: float  # the longest request: a stream a stopped host froze shows here
    recovery: str


def window_of(record: RequestRecord, windows: Sequence[FaultWindow]) -> FaultWindow | None:
    """The fault whose window (start to end + recovery) the request started in, or that struck it in flight."""
    started = next((w for w in windows if w.start <= record.started < w.until), None)
    return started or next((w for w in windows if record.started < w.start < record.ended), None)


def counter_increase(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """How much a counter sampled as (time, value) grew in [start, end); a drop is a restart from 0."""
    inside = [v for t, v in samples if start <= t < end]
    before = [v for t, v in samples if t < start]
    values = before[-1:] + inside
    return sum(b - a if b >= a else b for a, b in itertools.pairwise(values))


def retries_total(exposition: str) -> float:
    """The retry counter's value summed over models, from a router's /metrics text (0 before the first retry)."""
    lines = (line for line in exposition.splitlines() if line.startswith((RETRIES + "{", RETRIES + " ")))
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def retries_in(samples: Sequence[RetrySample], start: float, end: float) -> int | None:
    """Retries counted in [start, end), summed over routers: each router's counter starts at 0 with its process,
    so a router that appears (a restart) counts whole; None if no router was sampled in the span."""
    if not any(start <= s.at < end for s in samples):
        return None
    by_router: dict[int, list[tuple[float, float]]] = defaultdict(lambda: [(-math.inf, 0.0)])
    for s in samples:
        by_router[s.router_pid].append((s.at, s.value))
    return round(sum(counter_increase(series, start, end) for series in by_router.values()))


def healthy(rows: Sequence[WorkerRow], worker: str, hosts: int) -> bool:
    """The worker (every one of `hosts`, for "") is ready, its breaker closed and it takes requests."""
    wanted = [r for r in rows if worker in ("", r.worker_id)]
    fine = [r for r in wanted if r.ready and r.breaker == "closed" and not r.draining]
    return bool(wanted) and len(fine) == len(wanted) and (worker != "" or len(fine) == hosts)


def _row(name: str, host: str, records: Sequence[RequestRecord], retried: int | None, recovery: str) -> TallyRow:
    count = {o: sum(r.outcome == o for r in records) for o in ("ok", "refused", "error_event", "cut", "hung")}
    slowest = max((r.ended - r.started for r in records), default=0.0)
    return TallyRow(
        name,
        host,
        len(records),
        count["ok"],
        retried,
        count["refused"],
        count["error_event"],
        count["cut"],
        count["hung"],
        slowest,
        recovery,
    )


def tally(
    records: Sequence[RequestRecord],
    windows: Sequence[FaultWindow],
    retries: Sequence[RetrySample],
    recovery_timeout_s: float,
) -> list[TallyRow]:
    """One row per fault (the requests it struck or that started in its window; the retries counted in the
    window), one for the rest ("between faults"), then totals."""
    rows = []
    for w in windows:
        back = f"{w.recovery_s:.1f} s" if w.recovery_s is not None else f"not within {recovery_timeout_s:g} s"
        back = back if w.ready_s is None else f"{w.ready_s:.1f} s · {back}"
        mine = [r for r in records if window_of(r, windows) is w]
        rows.append(_row(w.fault, w.host or "router", mine, retries_in(retries, w.start, w.until), back))
    edges = [-math.inf, *(t for w in windows for t in (w.start, w.until)), math.inf]
    calm_spans = zip(edges[::2], edges[1::2], strict=True)  # before, between and after the windows
    calm_retries = [n for a, b in calm_spans if (n := retries_in(retries, a, b)) is not None]
    calm = [r for r in records if window_of(r, windows) is None]
    rows.append(_row(CALM, "", calm, sum(calm_retries) if calm_retries else None, ""))
    return [*rows, _row("total", "", records, sum(r.retried or 0 for r in rows), "")]


COLUMNS = (
    "fault",
    "host",
    "sent",
    "succeeded",
    "retried",
    "failed before 1st byte",
    "error event mid-stream",
    "cut, no error event",
    "hung",
    "slowest",
    "ready · served again after",
)


def table(rows: Sequence[TallyRow], title: str) -> Table:
    out = Table(title=title)
    for column in COLUMNS:
        out.add_column(column, justify="left" if column in ("fault", "host") else "right")
    for r in rows:
        counts = [r.sent, r.succeeded, "?" if r.retried is None else r.retried, r.refused, r.error_event, r.cut, r.hung]
        cells = [r.fault, r.host, *map(str, counts), f"{r.slowest_s:.1f} s", r.recovery]
        out.add_row(*cells, end_section=r.fault == CALM)
    return out
