"""Chaos: faults injected one after another into a namespace lab under load; what the clients saw, per fault.

    python -m cluster.bench chaos [--streams 64 --settle 10 --faults kill-engine,drain --max-tokens 64
                                   --sim-decode-ms 50 --deadline 60]

Three hosts (network namespaces with their own sshd, cluster/bench/netlab.py) come up with the real `cluster up
hosts.toml` over SSH, sim engines, one model with three replicas; ORCHARD_HOME is a fresh temporary folder. While
`--streams` closed loops send streaming chat requests (after a failure a loop pauses FAILURE_PAUSE_S), faults come
one at a time, `--settle` seconds apart: kill -9 h1's engine; kill -9 h2's agent; SIGSTOP h3's agent for
`--stop-seconds`; h1's cable unplugged at the bridge for `--link-seconds`; `cluster drain h2` until idle, then
undrain; a planned router restart (`cluster.bringup.lab.restart_router`). A host not back within
`--recovery-timeout` is repaired as an operator would, with `cluster up hosts.toml` again.

Per fault, the requests that started in its window (fault start to fault end + recovery): sent, succeeded,
failed before the first byte (an HTTP error or no answer), ended mid-stream with an error event, cut (the body
stopped without an error event or [DONE]), hung (not finished within `--deadline`), and the seconds from the
fault's end until the router lists the host ready with a closed breaker and it gave a first byte to a request
started after that end. No router counter says which requests were retried: "retried ≈" is the routing
decisions counted on /metrics during the window beyond one per request that got a first byte (an estimate that
also counts the tries of requests that failed; none for the router restart, whose two routers both answer).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cluster.bench import netlab
from cluster.bringup import drain, lab
from cluster.gateway.keys import operator_headers
from cluster.router.app import WORKER_HEADER
from cluster.router.rows import WorkerRow, WorkersReply
from worker import procs
from worker.procs import free_port

FAULTS = ("kill-engine", "kill-agent", "stop-agent", "cut-link", "drain", "restart-router")
TARGETS = {"kill-engine": "h1", "kill-agent": "h2", "stop-agent": "h3", "cut-link": "h1", "drain": "h2",
           "restart-router": ""}  # fmt: skip  # "": the router, every worker
AGENT_MODULE, ENGINE_MODULE = "worker.agent", "worker.engines.programs.sim"
MODEL, HOSTS = "sim-model", 3
CALM = "between faults"
FAILURE_PAUSE_S = 0.5  # a loop whose request failed waits this long: a refusing router is not a busy loop
DECISIONS = "orchard_routing_decisions_total"
Outcome = Literal["ok", "refused", "error_event", "cut", "hung"]


class ChaosError(Exception):
    """The lab could not be brought up, or a fault could not be injected; the message says why."""


@dataclass(frozen=True)
class ChaosConfig:
    streams: int = 64
    settle_s: float = 10.0
    faults: tuple[str, ...] = FAULTS
    max_tokens: int = 64
    sim_options: tuple[tuple[str, str], ...] = (("decode-ms-per-token", "50"),)
    deadline_s: float = 60.0  # a request not finished by then is hung
    stop_s: float = 20.0
    link_s: float = 15.0
    recovery_timeout_s: float = 60.0


@dataclass(frozen=True)
class RequestRecord:
    started: float  # time.monotonic()
    ended: float
    outcome: Outcome
    worker: str = ""  # the x-orchard-worker header ("" without an answer)
    status: int = 0  # HTTP status (0: no answer at all)


@dataclass(frozen=True)
class FaultWindow:
    fault: str
    host: str  # "" for the router
    start: float
    end: float  # when the fault was lifted (== start for a kill)
    until: float  # end + recovery, or when waiting for it gave up (after a repair)
    recovery_s: float | None
    note: str = ""


@dataclass(frozen=True)
class TallyRow:
    fault: str
    host: str
    sent: int
    succeeded: int
    retried: int | None
    refused: int
    error_event: int
    cut: int
    hung: int
    recovery: str


# --- pure: which process, which window, the table ---------------------------------------------------------------


def runs_module(argv: Sequence[str], module: str) -> bool:
    """True when `argv` is a Python running `-m module`: the interpreter's own first -m, not one in the argv it
    passes on (the keeper `python -m worker.keeper -- python -m worker.agent …` is not the agent)."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "-m":
            return argv[i + 1 : i + 2] == [module]
        if arg in ("-c", "--") or not arg.startswith("-"):
            return False
    return False


def window_of(started: float, windows: Sequence[FaultWindow]) -> FaultWindow | None:
    return next((w for w in windows if w.start <= started < w.until), None)


def counter_increase(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """How much a counter sampled as (time, value) grew in [start, end); a drop is a restart from 0."""
    inside = [v for t, v in samples if start <= t < end]
    before = [v for t, v in samples if t < start]
    values = before[-1:] + inside
    return sum(b - a if b >= a else b for a, b in zip(values, values[1:], strict=False))


def healthy(rows: Sequence[WorkerRow], worker: str, hosts: int = HOSTS) -> bool:
    """The worker (every one, for "") is ready, its breaker closed and it takes requests."""
    wanted = [r for r in rows if worker in ("", r.worker_id)]
    fine = [r for r in wanted if r.ready and r.breaker == "closed" and not r.draining]
    return bool(wanted) and len(fine) == len(wanted) and (worker != "" or len(fine) == hosts)


def _row(name: str, host: str, records: Sequence[RequestRecord], extra: float | None, recovery: str) -> TallyRow:
    count = {o: sum(r.outcome == o for r in records) for o in ("ok", "refused", "error_event", "cut", "hung")}
    answered = sum(1 for r in records if r.worker)
    retried = None if extra is None else max(0, round(extra) - answered)
    return TallyRow(name, host, len(records), count["ok"], retried, count["refused"], count["error_event"],
                    count["cut"], count["hung"], recovery)  # fmt: skip


def tally(
    records: Sequence[RequestRecord], windows: Sequence[FaultWindow], decisions: Sequence[tuple[float, float]],
    recovery_timeout_s: float,
) -> list[TallyRow]:  # fmt: skip
    """One row per fault (requests started in its window), one for the rest ("between faults"), then totals."""
    rows, calm = [], [r for r in records if window_of(r.started, windows) is None]
    for w in windows:
        mine = [r for r in records if window_of(r.started, windows) is w]
        extra = None if w.fault == "restart-router" else counter_increase(decisions, w.start, w.until)
        back = f"{w.recovery_s:.1f} s" if w.recovery_s is not None else f"not within {recovery_timeout_s:g} s"
        rows.append(_row(w.fault, w.host or "router", mine, extra, back))
    first = min((t for t, _ in decisions), default=0.0)
    gaps = [(a.until, b.start) for a, b in zip(windows, windows[1:], strict=False)]
    edges = [(first, windows[0].start if windows else float("inf")), *gaps]
    edges.append((windows[-1].until, float("inf"))) if windows else None
    rows.append(_row(CALM, "", calm, sum(counter_increase(decisions, a, b) for a, b in edges), ""))
    known = [r.retried for r in rows if r.retried is not None]
    total = _row("total", "", records, None, "")
    return [*rows, TallyRow(**{**total.__dict__, "retried": sum(known)})]


def table(rows: Sequence[TallyRow], title: str) -> Table:
    out = Table(title=title)
    for column in ("fault", "host", "sent", "succeeded", "retried ≈", "failed before 1st byte",
                   "error event mid-stream", "cut (no error event)", "hung", "host serving again after"):  # fmt: skip
        out.add_column(column, justify="left" if column in ("fault", "host") else "right")
    for r in rows:
        retried = "?" if r.retried is None else str(r.retried)
        out.add_row(r.fault, r.host, str(r.sent), str(r.succeeded), retried, str(r.refused), str(r.error_event),
                    str(r.cut), str(r.hung), r.recovery, end_section=r.fault == CALM)  # fmt: skip
    return out


def _decisions_total(exposition: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(DECISIONS))
