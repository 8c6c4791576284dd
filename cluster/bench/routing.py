"""Routing benchmark: the same seeded workload once per policy on one fleet, in one invocation.

    python -m cluster.bench routing --workers 4 --workload shared_prefix --rate 20 --requests 200
    python -m cluster.bench routing --engine vllm --workers 2 ...        # real engines, bundled model
    python -m cluster.bench routing --worker-sim-option 0:decode-ms-per-token=47 ...   # a faster worker
    python -m cluster.bench routing --url http://HOST:PORT --model NAME  # any OpenAI endpoint as it is

It starts N agents once (sim or vLLM). For each policy it empties every engine's prefix cache, starts a fresh
router with that policy, sends the workload open-loop (Poisson arrivals at --rate, seeded) and stops the
router. It prints TTFT p50/p90/p99, inter-token latency p50, output tokens/s, request rate, the engines' own
prefix-cache hit rate over the run, the load spread (std/mean of in-flight per worker, sampled) and each
worker's share of the requests; it writes the rows as JSON and, with matplotlib installed, a PNG chart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from pydantic import ValidationError

from cluster.bench import workloads
from cluster.bench.chart import write_chart
from cluster.bench.client import engine_url, pct, sse_chunks
from cluster.bringup.fleet import Fleet, fetch_workers
from cluster.router.rows import WorkersReply
from worker.shared.endpoints import PREFIX_CACHE_RESETTERS, RESET_PREFIX_CACHE
from worker.shared.enginemetrics import parse_engine_metrics
from worker.shared.launch import AgentConfig, EngineKind, Policy, RouterConfig
from worker.shared.models import BUNDLED_NAME
from worker.shared.procs import free_port

SIM_MODEL = "sim-model"


@dataclass(frozen=True)
class RoutingBenchConfig:
    workers: int = 4
    engine: EngineKind = "sim"  # sim | vllm
    model: str = ""  # default: sim-model for sim, the bundled model for vllm
    workloads: tuple[str, ...] = ("shared_prefix",)
    policies: tuple[Policy, ...] = ("prefix", "least_loaded", "round_robin")
    requests: int = 200
    rate: float = 20.0
    seed: int = 0
    max_tokens: int = 32
    system_words: tuple[int, int] = (750, 3000)  # shared_prefix system prompt length range
    groups: int = 0  # shared_prefix system prompts (0: one per 25 requests, at least 2)
    sim_options: tuple[tuple[str, str], ...] = ()
    worker_sim_options: tuple[tuple[int, tuple[str, str]], ...] = ()  # (worker index, KEY=VALUE): heterogeneous fleets
    engine_args: tuple[str, ...] = ()
    kv_cache_gib: float = 1.0
    url: str | None = None  # drive this endpoint as it is instead of starting a fleet
    out: Path = Path("bench-results/routing.json")

    @property
    def model_name(self) -> str:
        return self.model or (SIM_MODEL if self.engine == "sim" else BUNDLED_NAME)


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    workload: str
    requests: int
    errors: int
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p99_ms: float
    ttft_mean_ms: float
    itl_p50_ms: float
    output_tok_s: float
    request_rate: float
    prefix_hit_rate: float
    load_spread: float
    share: dict[str, float] = field(default_factory=dict)  # worker id -> fraction of requests it served


class BenchFleet:
    """N agents started once; routers come and go per policy. Everything is tied to this process."""

    def __init__(self, config: RoutingBenchConfig, logs: Path) -> None:
        self.config = config
        # vLLM's POST /reset_prefix_cache needs dev mode (the sim has it always).
        self.fleet = Fleet(logs, env={"VLLM_SERVER_DEV_MODE": "1"})
        self.agents = [self._agent(index) for index in range(config.workers)]
        self.engine_urls: list[str] = []
        self.warned = False

    def _agent(self, index: int) -> AgentConfig:
        config = self.config
        options = config.sim_options + tuple(o for i, o in config.worker_sim_options if i == index)
        return AgentConfig(
            listen=f"127.0.0.1:{free_port()}",
            engine=config.engine,
            model=config.model_name,
            worker_id=f"w{index}",
            kv_cache_gib=config.kv_cache_gib,
            log_dir=str(self.fleet.logs / f"w{index}"),
            sim_options=options,
            engine_args=config.engine_args,
        )

    def start(self) -> None:
        for agent in self.agents:
            self.fleet.start_agent(agent, name=f"agent-{agent.worker_id}")

    def stop(self) -> None:
        self.fleet.stop()

    @contextlib.contextmanager
    def router(self, policy: Policy, timeout_s: float) -> Iterator[str]:
        config = RouterConfig(
            listen=f"127.0.0.1:{free_port()}", workers=tuple(a.listen for a in self.agents), policy=policy
        )
        child = self.fleet.start_router(config, name=f"router-{policy}")
        try:
            self.fleet.wait_ready(config.local_url, len(self.agents), timeout_s)
            if not self.engine_urls:
                self.engine_urls = [engine_url(agent.listen) for agent in self.agents]
            yield config.local_url
        finally:
            self.fleet.stop(child)

    def reset_caches(self) -> None:
        """Every policy starts from cold caches, where the engine can empty them (said once where not)."""
        if self.config.engine not in PREFIX_CACHE_RESETTERS:
            if not self.warned:
                print(
                    f"note: the {self.config.engine} engine cannot empty its prefix cache; each policy starts "
                    "with the caches the previous one left",
                    flush=True,
                )
                self.warned = True
            return

        async def reset_all() -> None:
            async with httpx.AsyncClient() as http:
                replies = await asyncio.gather(
                    *(http.post(url + RESET_PREFIX_CACHE, timeout=30.0) for url in self.engine_urls)
                )
            for reply in replies:
                reply.raise_for_status()

        asyncio.run(reset_all())


def _prefix_counters(urls: list[str]) -> tuple[int, int]:
    """(hits, queries) summed over engines; (0, 0) where an endpoint exposes no vLLM metrics."""
    hits = queries = 0
    for url in urls:
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(url + "/metrics", timeout=5)
            if response.status_code == 200:
                load = parse_engine_metrics(response.text)
                hits, queries = hits + load.prefix_cache_hits, queries + load.prefix_cache_queries
    return hits, queries


async def _one(client: httpx.AsyncClient, url: str, request: workloads.Request) -> tuple[float, list[float], int]:
    headers = {"x-session-id": request.session} if request.session else {}
    started = time.perf_counter()
    stamps = [a.at async for a in sse_chunks(client, url, "/v1/chat/completions", request.body, headers) if a.has_text]
    if not stamps:
        raise RuntimeError("no tokens")
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return stamps[0] - started, gaps, len(stamps)


async def _sample_spread(url: str, stop: asyncio.Event, samples: list[float]) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValidationError):
                reply = WorkersReply.model_validate_json((await client.get(url + "/orchard/workers")).content)
                loads = [row.inflight for row in reply.workers]
                if sum(loads):
                    samples.append(statistics.pstdev(loads) / statistics.mean(loads))
            await asyncio.sleep(0.25)


async def _drive(
    url: str, requests: list[workloads.Request], rate: float, seed: int, sample_spread: bool
) -> tuple[list[tuple[float, list[float], int] | BaseException], float, list[float]]:
    rng = random.Random(seed)
    spread: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_spread(url, stop, spread)) if sample_spread else None
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        started = time.perf_counter()
        tasks = []
        for request in requests:
            tasks.append(asyncio.create_task(_one(client, url, request)))
            await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.perf_counter() - started
    stop.set()
    if sampler:
        await sampler
    return results, wall, spread


def _shares(url: str) -> dict[str, float]:
    with httpx.Client(timeout=5) as client:
        rows = fetch_workers(client, url)
    total = sum(row.served for row in rows) or 1
    return {row.worker_id: round(row.served / total, 3) for row in rows}


def measure(
    label: str,
    workload: str,
    requests: list[workloads.Request],
    config: RoutingBenchConfig,
    url: str,
    engine_urls: list[str],
    fleet: bool,
) -> PolicyResult:
    before = _prefix_counters(engine_urls)
    results, wall, spread = asyncio.run(_drive(url, requests, config.rate, config.seed, sample_spread=fleet))
    hits, queries = (after - first for after, first in zip(_prefix_counters(engine_urls), before, strict=True))
    ok = [r for r in results if isinstance(r, tuple)]
    ttfts = [r[0] * 1000 for r in ok]
    gaps = [g * 1000 for r in ok for g in r[1]]
    return PolicyResult(
        policy=label,
        workload=workload,
        requests=len(requests),
        errors=len(results) - len(ok),
        ttft_p50_ms=pct(ttfts, 0.5),
        ttft_p90_ms=pct(ttfts, 0.9),
        ttft_p99_ms=pct(ttfts, 0.99),
        ttft_mean_ms=statistics.mean(ttfts) if ttfts else float("nan"),
        itl_p50_ms=pct(gaps, 0.5),
        output_tok_s=sum(r[2] for r in ok) / wall,
        request_rate=len(ok) / wall,
        prefix_hit_rate=hits / queries if queries else float("nan"),
        load_spread=statistics.mean(spread) if spread else 0.0,
        share=_shares(url) if fleet else {},
    )


def run_policy(
    fleet: BenchFleet, policy: Policy, workload: str, requests: list[workloads.Request], config: RoutingBenchConfig
) -> PolicyResult:
    timeout = 900.0 if config.engine == "vllm" else 120.0  # a cold vLLM start compiles for minutes
    with fleet.router(policy, timeout) as url:
        fleet.reset_caches()
        return measure(policy, workload, requests, config, url, fleet.engine_urls, fleet=True)


WORKLOADS = ("shared_prefix", "multi_turn", "random")  # what `build` makes
ENGINES = ("sim", "vllm")  # the engines this study starts (each policy starts from empty prefix caches)


def build(workload: str, config: RoutingBenchConfig) -> list[workloads.Request]:
    model, count, seed, max_tokens = config.model_name, config.requests, config.seed, config.max_tokens
    if workload == "shared_prefix":
        groups = config.groups or max(2, count // 25)
        return workloads.shared_prefix(
            model,
            groups=groups,
            users=-(-count // groups),
            seed=seed,
            system_words=config.system_words,
            max_tokens=max_tokens,
        )[:count]
    if workload == "multi_turn":
        return workloads.multi_turn(model, conversations=max(2, count // 5), turns=5, seed=seed, max_tokens=max_tokens)[
            :count
        ]
    if workload == "random":
        return workloads.random_prompts(model, count, seed=seed, max_tokens=max_tokens)
    raise ValueError(f"unknown workload {workload!r}")


def print_table(rows: list[PolicyResult]) -> None:
    header = (
        f"{'workload':<14}{'policy':<14}{'TTFT p50':>10}{'p90':>9}{'p99':>9}{'mean':>9}{'ITL p50':>9}"
        f"{'tok/s':>9}{'req/s':>8}{'hit rate':>10}{'spread':>8}{'err':>5}  share"
    )
    print("\n" + header)
    for r in rows:
        share = " ".join(f"{w}={s:.2f}" for w, s in sorted(r.share.items()))
        print(
            f"{r.workload:<14}{r.policy:<14}{r.ttft_p50_ms:>10.0f}{r.ttft_p90_ms:>9.0f}{r.ttft_p99_ms:>9.0f}"
            f"{r.ttft_mean_ms:>9.0f}{r.itl_p50_ms:>9.1f}{r.output_tok_s:>9.1f}{r.request_rate:>8.2f}"
            f"{r.prefix_hit_rate:>10.2f}{r.load_spread:>8.2f}{r.errors:>5}  {share}"
        )


def main(config: RoutingBenchConfig) -> list[PolicyResult]:
    logs = Path(tempfile.mkdtemp(prefix="orchard-bench-routing-"))
    rows: list[PolicyResult] = []
    fleet = None if config.url else BenchFleet(config, logs)
    try:
        if fleet:
            fleet.start()
        for workload in config.workloads:
            requests = build(workload, config)
            if config.url:
                print(f"{workload} x {config.url}: {len(requests)} requests at {config.rate}/s …", flush=True)
                rows.append(measure("endpoint", workload, requests, config, config.url, [config.url], fleet=False))
                continue
            assert fleet is not None
            for policy in config.policies:
                print(f"{workload} x {policy}: {len(requests)} requests at {config.rate}/s …", flush=True)
                rows.append(run_policy(fleet, policy, workload, requests, config))
    finally:
        if fleet:
            fleet.stop()
    print_table(rows)
    out = config.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": _config_json(config), "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"\n(times in ms) rows written to {out}; logs in {logs}")
    chart = write_chart(rows, out.with_suffix(".png"), title=f"{config.workers} {config.engine} workers")
    print(f"chart: {chart}" if chart else "chart: skipped (pip install matplotlib, or the 'bench' extra)")
    return rows


def _config_json(config: RoutingBenchConfig) -> dict[str, object]:
    data = asdict(config)
    data["out"] = str(config.out)
    return data
