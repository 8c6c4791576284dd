"""The router's Prometheus metrics (one registry per app, no globals): what the router measures itself on the
request path, and, at scrape time, every worker's state and its engine's load as the agents report them
(labelled `worker`), so one scrape of the router sees the whole lab. The names are a contract: the Grafana board
in deploy/ queries them, and a test checks that it finds each."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster.gateway.usage import UsageRow
from cluster.router.breaker import BreakerState
from cluster.router.rows import Reachability, WorkerRow
from worker.shared.states import EngineState

UNKNOWN_MODEL = "unknown"  # the label of every model name no worker serves (clients choose names: unbounded)


def model_label(model: str, served: Container[str]) -> str:
    return model if model in served else UNKNOWN_MODEL


_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_GAPS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "orchard_requests", "requests by model and HTTP status (refused ones too)", ["model", "status"], registry=r
        )
        self.team_requests = Counter(
            "orchard_team_requests",
            "requests by team, model, worker and HTTP status",
            ["team", "model", "worker", "status"],
            registry=r,
        )
        self.tokens = Counter("orchard_tokens", "tokens by model and kind", ["model", "kind"], registry=r)
        self.team_tokens = Counter(
            "orchard_team_tokens", "tokens by team, model and kind", ["team", "model", "kind"], registry=r
        )
        self.ttft = Histogram(
            "orchard_time_to_first_token_seconds",
            "streams: from arrival to the first token",
            ["model", "worker"],
            registry=r,
            buckets=_LATENCY,
        )
        self.itl = Histogram(
            "orchard_inter_token_latency_seconds",
            "streams: the mean gap between tokens after the first (one observation per stream)",
            ["model", "worker"],
            registry=r,
            buckets=_GAPS,
        )
        self.duration = Histogram(
            "orchard_request_duration_seconds",
            "from admission to the last byte",
            ["model", "worker"],
            registry=r,
            buckets=_LATENCY,
        )
        self.queue_wait = Histogram(
            "orchard_queue_wait_seconds", "time in the admission queue", ["model"], registry=r, buckets=_LATENCY
        )
        self.cold_wait = Histogram(
            "orchard_cold_start_wait_seconds",
            "on-demand models: how long a request waited for its model's engine to load (cold starts only)",
            ["model"],
            registry=r,
            buckets=_LATENCY,
        )
        self.cold_waiting = Gauge(
            "orchard_cold_start_waiting",
            "requests waiting now for their on-demand model to load",
            ["model"],
            registry=r,
        )
        self.decisions = Counter("orchard_routing_decisions", "scheduler decisions by reason", ["reason"], registry=r)
        self.retries = Counter(
            "orchard_retries",
            "requests sent to another worker after one failed before the first byte",
            ["model"],
            registry=r,
        )
        self.tapped = Counter(
            "orchard_tapped_streams",
            "streams whose replies after the first came on their agent's tap (shared with other requests)",
            registry=r,
        )

    def watch(self, rows: Callable[[], list[WorkerRow]], queued: Callable[[], dict[str, int]]) -> None:
        """Report the lab at each scrape: `rows` (each worker as operators see it), `queued` (per model)."""
        self.registry.register(_Lab(rows, queued))

    def expect(self, models: Iterable[str]) -> None:
        """Rare events read 0 for every model served, not nothing (a rate over nothing is no line at all)."""
        for model in models:
            self.retries.labels(model)

    def observe_cold_start(self, model: str, waited_s: float) -> None:
        self.cold_wait.labels(model).observe(waited_s)

    def cold_waiting_by(self, model: str, delta: int) -> None:
        self.cold_waiting.labels(model).inc(delta)

    def observe_end(self, row: UsageRow) -> None:
        """Every counter and histogram of a request's end, from its one record: the only place they change
        (tests/unit/test_layout.py holds that)."""
        team, worker, status = row.team or "-", row.worker or "-", str(row.status)
        self.requests.labels(row.model, status).inc()
        self.team_requests.labels(team, row.model, worker, status).inc()
        for kind, count in (("prompt", row.prompt_tokens), ("completion", row.completion_tokens)):
            self.tokens.labels(row.model, kind).inc(count)
            self.team_tokens.labels(team, row.model, kind).inc(count)
        if row.worker:
            self.duration.labels(row.model, row.worker).observe(row.duration_s)
            if row.stream and row.ttft_s is not None:
                self.ttft.labels(row.model, row.worker).observe(row.ttft_s)
            if row.itl_s is not None:
                self.itl.labels(row.model, row.worker).observe(row.itl_s)

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()


class _Lab(Collector):
    def __init__(self, rows: Callable[[], list[WorkerRow]], queued: Callable[[], dict[str, int]]) -> None:
        self.rows, self.queued = rows, queued

    def collect(self) -> Iterator[Metric]:
        yield from lab_families(self.rows(), self.queued())


_STATES = [state.value for states in (EngineState, Reachability) for state in states]
# (name, help, value of a row): engine samples, re-exported per worker
_GAUGES: tuple[tuple[str, str, Callable[[WorkerRow], float | None]], ...] = (
    ("orchard_worker_inflight", "requests the router has in flight on the worker", lambda w: w.inflight),
    (
        "orchard_worker_breaker_state",
        "circuit breaker: 0 closed, 1 half-open, 2 open",
        lambda w: BreakerState(w.breaker).gauge,
    ),
    ("orchard_worker_draining", "1 while drained (takes no new requests)", lambda w: w.draining),
    (
        "orchard_worker_tokens_per_second",
        "tokens generated per second, between its last two samples",
        lambda w: w.tokens_per_s,
    ),
    (
        "orchard_worker_ttft_p50_seconds",
        "median time to first token of its streams over the last minute",
        lambda w: w.ttft_p50_s,
    ),  # none: no sample, not a 0
    ("orchard_worker_memory_bytes", "the host's memory", lambda w: w.memory_bytes),
    (
        "orchard_worker_memory_available_bytes",
        "the host's memory free for use now",
        lambda w: w.memory_available_bytes or None,
    ),
    ("orchard_engine_running", "requests the engine is computing", lambda w: w.load.running),
    ("orchard_engine_waiting", "requests waiting in the engine", lambda w: w.load.waiting),
    ("orchard_engine_kv_cache_usage", "KV cache in use, 0..1", lambda w: w.load.kv_cache_usage),
    (
        "orchard_engine_prefill_tokens_per_second",
        "measured prefill rate (moving average)",
        lambda w: w.load.prefill_tokens_per_s,
    ),
    (
        "orchard_engine_decode_tokens_per_second",
        "measured decode rate of one request (moving average)",
        lambda w: w.load.decode_tokens_per_s,
    ),
)
_COUNTERS: tuple[tuple[str, str, Callable[[WorkerRow], float]], ...] = (
    ("orchard_engine_prompt_tokens", "prompt tokens the engine read", lambda w: w.load.prompt_tokens),
    ("orchard_engine_generation_tokens", "tokens the engine generated", lambda w: w.load.generation_tokens),
    (
        "orchard_engine_prefix_cache_queries",
        "prompt tokens looked up in the prefix cache",
        lambda w: w.load.prefix_cache_queries,
    ),
    ("orchard_engine_prefix_cache_hits", "prompt tokens found in the prefix cache", lambda w: w.load.prefix_cache_hits),
    ("orchard_engine_restarts", "engine restarts since the agent started", lambda w: w.engine_restarts),
)


def lab_families(rows: Iterable[WorkerRow], queued: dict[str, int]) -> Iterator[Metric]:
    """The lab as metric families: one sample per worker (and per state, model, queue)."""
    rows = list(rows)
    info = GaugeMetricFamily(
        "orchard_worker_info", "1 per worker, naming it", labels=["worker", "address", "host", "chip", "os", "engine"]
    )
    state = GaugeMetricFamily(
        "orchard_worker_state", "1 for the worker's state, 0 for the others", labels=["worker", "state"]
    )
    serves = GaugeMetricFamily("orchard_worker_model", "1 per model the worker serves", labels=["worker", "model"])
    for w in rows:
        info.add_metric([w.worker_id, w.address, w.host, w.chip, w.os, w.engine], 1)
        for name in _STATES:
            state.add_metric([w.worker_id, name], 1 if w.state.value == name else 0)
        for model in w.models:
            serves.add_metric([w.worker_id, model], 1)
    yield from (info, state, serves)
    for name, text, value in _GAUGES:
        gauge = GaugeMetricFamily(name, text, labels=["worker"])
        for w in rows:
            if (v := value(w)) is not None:
                gauge.add_metric([w.worker_id], float(v))
        yield gauge
    for name, text, value in _COUNTERS:
        counter = CounterMetricFamily(name, text, labels=["worker"])
        for w in rows:
            counter.add_metric([w.worker_id], float(value(w)))
        yield counter
    depth = GaugeMetricFamily("orchard_queue_depth", "requests waiting in the admission queue", labels=["model"])
    for model, waiting in sorted(queued.items()):
        depth.add_metric([model], waiting)
    yield depth
