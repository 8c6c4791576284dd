"""The router's own Prometheus metrics (one registry per app, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cluster.gateway.usage import UsageRow
from proto import orchard_pb2 as pb


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "orchard_requests", "requests by model and HTTP status", ["model", "status"], registry=self.registry
        )
        self.ttft = Histogram(
            "orchard_time_to_first_byte_seconds", "router-side time to first byte", ["model"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.decisions = Counter(
            "orchard_routing_decisions", "scheduler decisions by reason", ["reason"], registry=self.registry
        )
        self.retries = Counter(
            "orchard_retries",
            "requests sent to another worker after one failed before the first byte",
            ["model"],
            registry=self.registry,
        )
        self.tokens = Counter("orchard_tokens", "tokens by model and kind", ["model", "kind"], registry=self.registry)
        self.team_requests = Counter(
            "orchard_team_requests", "requests by team, model and HTTP status", ["team", "model", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.team_tokens = Counter(
            "orchard_team_tokens", "tokens by team, model and kind", ["team", "model", "kind"], registry=self.registry
        )

        self.breaker = Gauge(
            "orchard_worker_breaker_state", "each worker's circuit breaker: 0 closed, 1 half-open, 2 open",
            ["worker"], registry=self.registry,
        )  # fmt: skip

    def count_usage(self, row: UsageRow) -> None:
        team = row.team or "-"
        self.team_requests.labels(team, row.model, str(row.status)).inc()
        self.team_tokens.labels(team, row.model, "prompt").inc(row.prompt_tokens)
        self.team_tokens.labels(team, row.model, "completion").inc(row.completion_tokens)

    def count_tokens(self, model: str, usage: pb.Usage) -> None:
        self.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        self.tokens.labels(model, "completion").inc(usage.completion_tokens)

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()
