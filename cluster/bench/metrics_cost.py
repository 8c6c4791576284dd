"""What seeing the lab costs the request path: the router's per-request bookkeeping (metrics, the dashboard's
activity, the request's log line) timed side by side with the bookkeeping the router did before it had them,
and one /metrics scrape of a lab of N workers. No sockets: the work itself, in a loop.

    python -m cluster.bench metrics [--requests 20000] [--workers 64]
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from cluster.gateway.usage import UsageRow
from cluster.router import requestlog
from cluster.router.activity import Activity
from cluster.router.metrics import RouterMetrics
from cluster.router.recent import Window
from cluster.router.rows import WorkerRow
from worker.shared.load import Load
from worker.shared.states import EngineState

MODEL, WORKER, TEAM = "model-a", "worker-0001", "team-a"


@dataclass(frozen=True)
class Cost:
    before_us: float  # per request, the bookkeeping the router did before
    now_us: float  # per request, with every metric, the activity and the log line
    scrape_ms: float  # one /metrics exposition of the whole lab
    workers: int


def _per_call_us(work: Callable[[int], None], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        work(i)
    return (time.perf_counter() - started) / n * 1e6


def _before() -> Callable[[int], None]:
    """The per-request metric work of the router before issue 16 (its counters and one histogram)."""
    r = CollectorRegistry()
    requests = Counter("b_requests", "", ["model", "status"], registry=r)
    ttfb = Histogram("b_ttfb", "", ["model"], registry=r)
    tokens = Counter("b_tokens", "", ["model", "kind"], registry=r)
    team_requests = Counter("b_team_requests", "", ["team", "model", "status"], registry=r)
    team_tokens = Counter("b_team_tokens", "", ["team", "model", "kind"], registry=r)

    def work(i: int) -> None:
        ttfb.labels(MODEL).observe(0.05)
        tokens.labels(MODEL, "prompt").inc(20)
        tokens.labels(MODEL, "completion").inc(64)
        requests.labels(MODEL, "200").inc()
        team_requests.labels(TEAM, MODEL, "200").inc()
        team_tokens.labels(TEAM, MODEL, "prompt").inc(20)
        team_tokens.labels(TEAM, MODEL, "completion").inc(64)

    return work


@contextlib.contextmanager
def _logging_to(sink: logging.Handler) -> Iterator[None]:
    """The request log at INFO into `sink` only (as the router writes it), put back afterwards."""
    log = requestlog.log
    saved = (log.level, log.propagate)
    log.addHandler(sink)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(sink)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _now(sink: logging.StreamHandler[io.StringIO]) -> Callable[[int], None]:
    metrics, activity, window = RouterMetrics(), Activity(), Window()

    def work(i: int) -> None:
        metrics.queue_wait.labels(MODEL).observe(0.001)
        window.add(float(i), 0.05)
        row = UsageRow(float(i), f"{i:032x}", "key-1", TEAM, MODEL, WORKER, 20, 64, 0, 200, 0.05, 0.7, True, 0.01)
        metrics.observe_end(row)
        activity.observe(row)
        requestlog.write(row)
        sink.stream = io.StringIO() if i % 1000 == 0 else sink.stream  # keep memory flat

    return work


def _scrape_ms(workers: int, repeats: int = 20) -> float:
    metrics = RouterMetrics()
    rows = [
        WorkerRow(
            address=f"10.0.{i // 256}.{i % 256}:50051",
            worker_id=f"w{i:04d}",
            state=EngineState.READY,
            models=[MODEL],
            load=Load(running=3, kv_cache_usage=0.4, generation_tokens=10**6),
            tokens_per_s=40.0,
            ttft_p50_s=0.08,
        )
        for i in range(workers)
    ]
    metrics.watch(lambda: rows, lambda: {MODEL: 2})
    started = time.perf_counter()
    for _ in range(repeats):
        metrics.exposition()
    return (time.perf_counter() - started) / repeats * 1000


def measure(requests: int, workers: int) -> Cost:
    sink = logging.StreamHandler(io.StringIO())  # each line is formatted and written, as in the router
    with _logging_to(sink):
        before, now = _before(), _now(sink)
        for work in (before, now):  # warm: label children made, code paths taken
            _per_call_us(work, 1000)
        rounds = [(_per_call_us(before, requests // 4), _per_call_us(now, requests // 4)) for _ in range(4)]
    return Cost(
        before_us=min(b for b, _ in rounds),
        now_us=min(n for _, n in rounds),
        scrape_ms=_scrape_ms(workers),
        workers=workers,
    )


def report(cost: Cost) -> str:
    added = cost.now_us - cost.before_us
    return (
        f"per request, bookkeeping before: {cost.before_us:.1f} µs; now (every metric, the dashboard's activity, "
        f"the log line): {cost.now_us:.1f} µs; added {added:.1f} µs = {added / 1000:.3f} ms\n"
        f"one /metrics scrape of a lab of {cost.workers} workers: {cost.scrape_ms:.1f} ms (off the request path)"
    )
