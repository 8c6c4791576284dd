"""Routing benchmark: the same seeded workload against a fresh sim fleet once per policy, in one invocation.

    python -m cluster.bench routing --workers 4 --workload shared_prefix --rate 20 --requests 200

For each policy it starts N sim agents (empty caches) and a router, sends the workload open-loop (Poisson
arrivals at --rate, seeded), then prints TTFT p50/p90/p99, inter-token latency p50, output tokens/s, request
rate, the engines' own prefix-cache hit rate and the load spread (std/mean of in-flight per worker, sampled),
and writes the rows as JSON.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from cluster import procs, workloads
from cluster.bench import _engine_url
from worker.supervisor import free_port

MODEL = "sim-model"


@dataclass(frozen=True)
class RoutingBenchConfig:
    workers: int = 4
    workloads: tuple[str, ...] = ("shared_prefix",)
    policies: tuple[str, ...] = ("prefix", "least_loaded", "round_robin")
    requests: int = 200
    rate: float = 20.0
    seed: int = 0
    sim_options: tuple[str, ...] = ()
    out: Path = Path("bench-results/routing.json")


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    workload: str
    requests: int
    errors: int
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    output_tok_s: float
    request_rate: float
    prefix_hit_rate: float
    load_spread: float


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _start_fleet(workers: int, policy: str, sim_options: list[str], logs: Path) -> tuple[str, list[int], list[str]]:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(workers)]
    pids = []
    for index, address in enumerate(addresses):
        argv = [sys.executable, "-m", "worker.agent", "--listen", address, "--engine", "sim", "--model", MODEL,
                "--worker-id", f"w{index}", "--log-dir", str(logs / f"w{index}")]  # fmt: skip
        for option in sim_options:
            argv += ["--sim-option", option]
        pids.append(procs.spawn(argv, logs / f"agent{index}.log", tied_to_parent=True))
    port = free_port()
    router = [sys.executable, "-m", "cluster.router", "--listen", f"127.0.0.1:{port}", "--policy", policy]
    for address in addresses:
        router += ["--worker", address]
    pids.append(procs.spawn(router, logs / "router.log", tied_to_parent=True))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            rows = httpx.get(url + "/orchard/workers", timeout=2).json()["workers"]
            if len(rows) == workers and all(r["state"] == "ready" for r in rows):
                return url, pids, addresses
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    for pid in pids:
        procs.terminate_tree(pid)
    raise RuntimeError(f"the sim fleet did not come up; logs in {logs}")


async def _one(client: httpx.AsyncClient, url: str, request: workloads.Request) -> tuple[float, list[float], int]:
    headers = {"x-session-id": request.session} if request.session else {}
    started = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", url + "/v1/chat/completions", json=request.body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content"' in line and '"content": ""' not in line:
                stamps.append(time.perf_counter())
    if not stamps:
        raise RuntimeError("no tokens")
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return stamps[0] - started, gaps, len(stamps)


async def _sample_spread(url: str, stop: asyncio.Event, samples: list[float]) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        while not stop.is_set():
            try:
                rows = (await client.get(url + "/orchard/workers")).json()["workers"]
                loads = [r["inflight"] for r in rows]
                if sum(loads):
                    samples.append(statistics.pstdev(loads) / statistics.mean(loads))
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.25)


async def _drive(
    url: str, requests: list[workloads.Request], rate: float, seed: int
) -> tuple[list, float, list[float]]:
    rng = random.Random(seed)
    spread: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_spread(url, stop, spread))
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        started = time.perf_counter()
        tasks = []
        for request in requests:
            tasks.append(asyncio.create_task(_one(client, url, request)))
            await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.perf_counter() - started
    stop.set()
    await sampler
    return results, wall, spread


def _hit_rate(addresses: list[str]) -> float:
    hits = queries = 0.0
    for address in addresses:
        text = httpx.get(_engine_url(address) + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
    return hits / queries if queries else 0.0


def run_policy(
    policy: str, workload: str, requests: list[workloads.Request], config: RoutingBenchConfig, logs: Path
) -> PolicyResult:
    url, pids, addresses = _start_fleet(config.workers, policy, list(config.sim_options), logs / policy)
    try:
        results, wall, spread = asyncio.run(_drive(url, requests, config.rate, config.seed))
        ok = [r for r in results if isinstance(r, tuple)]
        ttfts = [r[0] * 1000 for r in ok]
        gaps = [g * 1000 for r in ok for g in r[1]]
        tokens = sum(r[2] for r in ok)
        return PolicyResult(
            policy=policy, workload=workload, requests=len(requests), errors=len(results) - len(ok),
            ttft_p50_ms=_pct(ttfts, 0.5), ttft_p90_ms=_pct(ttfts, 0.9), ttft_p99_ms=_pct(ttfts, 0.99),
            itl_p50_ms=_pct(gaps, 0.5), output_tok_s=tokens / wall, request_rate=len(ok) / wall,
            prefix_hit_rate=_hit_rate(addresses), load_spread=statistics.mean(spread) if spread else 0.0,
        )  # fmt: skip
    finally:
        for pid in pids:
            procs.terminate_tree(pid)


def build(workload: str, count: int, seed: int) -> list[workloads.Request]:
    if workload == "shared_prefix":
        return workloads.shared_prefix(MODEL, groups=max(2, count // 25), users=25, seed=seed)[:count]
    if workload == "multi_turn":
        return workloads.multi_turn(MODEL, conversations=max(2, count // 5), turns=5, seed=seed)[:count]
    if workload == "random":
        return workloads.random_prompts(MODEL, count, seed=seed)
    raise ValueError(f"unknown workload {workload!r}")


def main(config: RoutingBenchConfig) -> None:
    logs = Path(tempfile.mkdtemp(prefix="orchard-bench-routing-"))
    rows: list[PolicyResult] = []
    for workload in config.workloads:
        requests = build(workload, config.requests, config.seed)
        for policy in config.policies:
            print(f"{workload} x {policy}: {len(requests)} requests at {config.rate}/s …", flush=True)
            rows.append(run_policy(policy, workload, requests, config, logs / workload))
    header = (f"{'workload':<14}{'policy':<14}{'TTFT p50':>10}{'p90':>9}{'p99':>9}{'ITL p50':>9}{'tok/s':>9}"
              f"{'req/s':>8}{'hit rate':>10}{'spread':>8}{'err':>5}")  # fmt: skip
    print("\n" + header)
    for r in rows:
        print(f"{r.workload:<14}{r.policy:<14}{r.ttft_p50_ms:>10.0f}{r.ttft_p90_ms:>9.0f}{r.ttft_p99_ms:>9.0f}"
              f"{r.itl_p50_ms:>9.1f}{r.output_tok_s:>9.0f}{r.request_rate:>8.1f}{r.prefix_hit_rate:>10.2f}"
              f"{r.load_spread:>8.2f}{r.errors:>5}")  # fmt: skip
    out = config.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(f"\n(times in ms) rows written to {out}; logs in {logs}")
