"""The default policy, layered (exo's plan.py style: the first rule that decides wins).

session pin → imbalance guard → longest cached prefix above a threshold → lowest estimated cost.
A miss goes to the cheapest worker, never to "the one with the smallest tree" (SGLang #14305's hot spot).
A pin holds only while its worker is not much more loaded than the least loaded one (the imbalance guard's rule):
otherwise sessions pinned while a worker was away would never move to it when it returns (issue 27).
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
    queue_cost_s: float = 0.05  # estimated seconds each request ahead adds on a worker of median decode speed
    chars_per_token: float = 4.0  # to turn the rendered prompt's characters into tokens without a tokenizer


DEFAULTS = PrefixPolicyConfig()


def pick(
    request: RequestView,
    workers: list[WorkerView],
    state: RoutingState,
    now: float,
    config: PrefixPolicyConfig = DEFAULTS,
) -> Decision:
    return (
        _decide_session(request, workers, state, now, config)
        or _decide_imbalance(workers, config)
        or _decide_prefix(request, workers, state, config)
        or _decide_cost(request, workers, state, config)
    )


def _decide_session(
    request: RequestView, workers: list[WorkerView], state: RoutingState, now: float, config: PrefixPolicyConfig
) -> Decision | None:
    """The pinned worker while it is ready and not much more loaded than the least loaded one. A pin that fails
    the balance test falls through to the imbalance guard, which picks the least loaded worker (a returning one)."""
    if request.session is None:
        return None
    pinned = state.sessions.get(request.session, now)
    home = next((w for w in workers if w.worker_id == pinned), None)
    if home is None or _much_more_loaded(home.busy, min(w.busy for w in workers), config):
        return None
    return Decision(home.worker_id, "session")


def _decide_imbalance(workers: list[WorkerView], config: PrefixPolicyConfig) -> Decision | None:
    loads = [w.busy for w in workers]
    if _much_more_loaded(max(loads), min(loads), config):
        best = min(workers, key=lambda w: (w.busy, w.worker_id))
        return Decision(best.worker_id, "imbalance")
    return None


def _much_more_loaded(high: int, low: int, config: PrefixPolicyConfig) -> bool:
    """The balance rule: `high` exceeds `low` by more than `imbalance_abs` and by more than `imbalance_rel` times."""
    return high - low > config.imbalance_abs and high > config.imbalance_rel * max(low, 1)


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
    best = min(holders, key=lambda w: (w.busy, w.worker_id))
    return Decision(best.worker_id, "prefix_hit")


def _decide_cost(
    request: RequestView, workers: list[WorkerView], state: RoutingState, config: PrefixPolicyConfig
) -> Decision:
    """Uncached prompt ÷ that worker's measured prefill rate, plus its queue at its measured decode speed."""
    fleet = FleetRates.of(workers)
    best = min(workers, key=lambda w: (estimated_seconds(request, w, state, fleet, config), w.worker_id))
    return Decision(best.worker_id, "cost")


@dataclass(frozen=True)
class FleetRates:
    """Median measured rates, standing in for workers not measured yet (1.0 when nobody is)."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float

    @classmethod
    def of(cls, workers: list[WorkerView]) -> FleetRates:
        prefill = [w.load.prefill_tokens_per_s for w in workers if w.load.prefill_tokens_per_s > 0]
        decode = [w.load.decode_tokens_per_s for w in workers if w.load.decode_tokens_per_s > 0]
        return cls(
            prefill_tokens_per_s=statistics.median(prefill) if prefill else 1.0,
            decode_tokens_per_s=statistics.median(decode) if decode else 1.0,
        )


def estimated_seconds(
    request: RequestView, worker: WorkerView, state: RoutingState, fleet: FleetRates, config: PrefixPolicyConfig
) -> float:
    """Seconds until this request's first token on `worker`: its uncached prompt at the worker's prefill rate,
    plus the requests ahead of it, each costing `queue_cost_s` scaled by how fast this worker decodes."""
    cached_chars = state.prefixes.matched_blocks(worker.worker_id, request.block_hashes) * BLOCK_CHARS
    uncached_tokens = max(request.prompt_chars - cached_chars, 0) / config.chars_per_token
    prefill_rate = worker.load.prefill_tokens_per_s or fleet.prefill_tokens_per_s
    slowness = fleet.decode_tokens_per_s / (worker.load.decode_tokens_per_s or fleet.decode_tokens_per_s)
    return uncached_tokens / prefill_rate + worker.busy * config.queue_cost_s * slowness
