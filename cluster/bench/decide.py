"""The routing decision itself, without sockets: prefix policy on a warm index.

python -m cluster.bench decide [--workers 64]
"""

from __future__ import annotations

import random
import time

from cluster.bench.client import pct
from cluster.routing.choose import RequestView, RoutingState, WorkerView, choose
from cluster.routing.prefix_index import block_hashes
from worker.shared.load import Load


def decision_latency(workers: int, requests: int, groups: int, seed: int) -> list[float]:
    """Seconds per routing decision (prefix policy, including the index update) on a warm index."""
    rng = random.Random(seed)
    systems = [
        f"System prompt {g}: " + " ".join(rng.choice(("apple", "pear", "plum", "fig")) for _ in range(600))
        for g in range(groups)
    ]
    views = [
        WorkerView(
            f"w{i}",
            True,
            inflight=rng.randint(0, 4),
            load=Load(prefill_tokens_per_s=rng.uniform(2e3, 8e3), decode_tokens_per_s=rng.uniform(20, 80)),
        )
        for i in range(workers)
    ]
    state = RoutingState()
    prompts = [systems[rng.randrange(groups)] + f" user question {i}" for i in range(requests)]

    def route(prompt: str) -> None:
        request = RequestView("m", None, block_hashes(prompt), len(prompt))
        decision = choose("prefix", request, views, state, now=0.0)
        if decision is None:
            raise RuntimeError("no worker chosen: every worker is ready in this benchmark")
        state.prefixes.record(decision.worker_id, request.block_hashes)

    for prompt in prompts[: requests // 2]:  # warm the index
        route(prompt)
    timings = []
    for prompt in prompts[requests // 2 :]:
        started = time.perf_counter()
        route(prompt)
        timings.append(time.perf_counter() - started)
    return timings


def report(workers: int, requests: int, groups: int, seed: int) -> None:
    timings = decision_latency(workers, requests, groups, seed)
    p50, p99 = pct(timings, 0.5), pct(timings, 0.99)
    print(f"prefix policy, {workers} workers, {groups} prompt groups, warm index, {len(timings)} decisions")
    print(f"decision incl. hashing and index update: p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms")
