"""The default policy, layered (exo's plan.py style: the first rule that decides wins).

session pin → imbalance guard → longest cached prefix above a threshold → lowest estimated cost.
A miss goes to the cheapest worker, never to "the one with the smallest tree" (SGLang #14305's hot spot).
Thresholds follow SGLang's cache-aware router: imbalance when max - min > 64 and max > 1.5 * min (scaled
down here for small fleets via `imbalance_abs`), prefix match ratio > 0.3.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from cluster.routing.prefix_index import BLOCK_CHARS
from cluster.routing.types import Decision, RequestView, RoutingState, WorkerView


@dataclass(frozen=True)
class PrefixPolicyConfig:
    imbalance_abs: int = 8
    imbalance_rel: float = 1.5
    match_threshold: float = 0.3
    queue_cost_s: float = 0.05  # estimated seconds each request ahead adds


DEFAULTS = PrefixPolicyConfig()


def pick(
    request: RequestView,
    workers: list[WorkerView],
    state: RoutingState,
    now: float,
    config: PrefixPolicyConfig = DEFAULTS,
) -> Decision:
    return (
        _decide_session(request, workers, state, now)
        or _decide_imbalance(workers, config)
        or _decide_prefix(request, workers, state, config)
        or _decide_cost(request, workers, state, config)
    )


def _decide_session(
    request: RequestView, workers: list[WorkerView], state: RoutingState, now: float
) -> Decision | None:
    if request.session is None:
        return None
    pinned = state.sessions.get(request.session, now)
    if pinned is not None and any(w.worker_id == pinned for w in workers):
        return Decision(pinned, "session")
    return None


def _decide_imbalance(workers: list[WorkerView], config: PrefixPolicyConfig) -> Decision | None:
    loads = [w.load for w in workers]
    high, low = max(loads), min(loads)
    if high - low > config.imbalance_abs and high > config.imbalance_rel * max(low, 1):
        best = min(workers, key=lambda w: (w.load, w.worker_id))
        return Decision(best.worker_id, "imbalance")
    return None


def _decide_prefix(
    request: RequestView, workers: list[WorkerView], state: RoutingState, config: PrefixPolicyConfig
) -> Decision | None:
    if not request.block_hashes:
        return None
    total = len(request.block_hashes)
    scored = [(state.prefixes.matched_blocks(w.worker_id, request.block_hashes), w) for w in workers]
    best_match = max(matched for matched, _ in scored)
    if best_match / total <= config.match_threshold:
        return None
    holders = [w for matched, w in scored if matched == best_match]
    best = min(holders, key=lambda w: (w.load, w.worker_id))
    return Decision(best.worker_id, "prefix_hit")


def _decide_cost(
    request: RequestView, workers: list[WorkerView], state: RoutingState, config: PrefixPolicyConfig
) -> Decision:
    """Uncached prompt ÷ that worker's measured prefill rate, plus its queue."""

    known = [w.prefill_chars_per_s for w in workers if w.prefill_chars_per_s > 0]
    fallback = statistics.median(known) if known else 1.0
    best = min(
        workers,
        key=lambda w: (estimated_seconds(request, w, state, fallback, config.queue_cost_s), w.worker_id),
    )
    return Decision(best.worker_id, "cost")


def estimated_seconds(
    request: RequestView, worker: WorkerView, state: RoutingState, fallback_rate: float, queue_cost_s: float
) -> float:
    """Uncached prompt ÷ the worker's prefill rate, plus the requests ahead of it."""
    cached_chars = state.prefixes.matched_blocks(worker.worker_id, request.block_hashes) * BLOCK_CHARS
    uncached = max(request.prompt_chars - cached_chars, 0)
    rate = worker.prefill_chars_per_s or fallback_rate
    return uncached / rate + worker.load * queue_cost_s
