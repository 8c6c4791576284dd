"""Router + agent overhead: the same streaming load to the engine directly and through Orchard, alternating
rounds in one run; prints throughput and time to first token for both and the ratios.

    python -m cluster.bench overhead [--engine sim|vllm|mlx] [--concurrency 32] [--max-tokens 128] [--rounds 2]
    python -m cluster.bench overhead --compare-mtls    # router↔agent with mutual TLS vs plaintext, alternating
    python -m cluster.bench overhead --engine vllm --api messages   # Anthropic's /v1/messages stream instead

Rounds alternate which target goes first, and both targets get the same prompts in a round (Anthropic's API has no
`ignore_eos`: equal prompts at temperature 0 make equal work).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from cluster.bench.client import engine_url, pct, sse_chunks
from cluster.bringup import local
from worker.shared.launch import EngineKind
from worker.shared.models import BUNDLED_NAME


@dataclass(frozen=True)
class RoundResult:
    target: str
    wall_s: float
    output_tokens: int
    ttfts: tuple[float, ...]
    errors: int

    @property
    def throughput(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s else 0.0

    def ttft_pct(self, q: float) -> float:
        return pct(self.ttfts, q)


PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages"}


async def _one_stream(
    client: httpx.AsyncClient, url: str, api: str, body: dict[str, object], headers: dict[str, str] | None
) -> tuple[float, int]:
    started = time.perf_counter()
    ttft, tokens = 0.0, 0
    async for arrival in sse_chunks(client, url, PATHS[api], body, headers):
        if arrival.has_text:
            tokens += 1
            ttft = ttft or arrival.at - started
    return ttft, tokens


def _body(api: str, model: str, max_tokens: int, text: str) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    if api == "chat":
        body["ignore_eos"] = True  # vLLM: always produce max_tokens, so every round does the same work
    return body


async def run_round(
    target: str,
    url: str,
    model: str,
    concurrency: int,
    max_tokens: int,
    seed: int,
    headers: dict[str, str] | None = None,
    api: str = "chat",
) -> RoundResult:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        texts = [f"Request {seed}-{i}: tell me a long story about orchards." for i in range(concurrency)]
        bodies = [_body(api, model, max_tokens, text) for text in texts]
        started = time.perf_counter()
        streams = (_one_stream(client, url, api, body, headers) for body in bodies)
        results = await asyncio.gather(*streams, return_exceptions=True)
        wall = time.perf_counter() - started
    ok = [r for r in results if isinstance(r, tuple)]
    return RoundResult(
        target=target,
        wall_s=wall,
        output_tokens=sum(tokens for _, tokens in ok),
        ttfts=tuple(ttft for ttft, _ in ok),
        errors=len(results) - len(ok),
    )


def print_table(
    results: list[RoundResult], base: str = "direct", other: str = "router", what: str = "router+agent"
) -> None:
    print(f"{'target':<8} {'round':>5} {'tok/s':>9} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'errors':>6}")
    rounds: dict[str, int] = {}
    for r in results:
        rounds[r.target] = rounds.get(r.target, 0) + 1
        print(
            f"{r.target:<8} {rounds[r.target]:>5} {r.throughput:>9.1f} {r.ttft_pct(0.5) * 1000:>12.1f} "
            f"{r.ttft_pct(0.99) * 1000:>12.1f} {r.errors:>6}"
        )
    direct = [r for r in results if r.target == base and r.throughput]
    routed = [r for r in results if r.target == other and r.throughput]
    if not direct or not routed:
        print(f"\nno round of {base if not direct else other} streamed a token: no ratio (see the errors above)")
        return
    ratio = statistics.mean(r.throughput for r in routed) / statistics.mean(r.throughput for r in direct)
    p50 = statistics.mean(r.ttft_pct(0.5) for r in routed) - statistics.mean(r.ttft_pct(0.5) for r in direct)
    p99 = statistics.mean(r.ttft_pct(0.99) for r in routed) - statistics.mean(r.ttft_pct(0.99) for r in direct)
    print(f"\nthroughput ratio {other}/{base}: {ratio:.3f}")
    print(f"added TTFT by {what}: p50 {p50 * 1000:+.1f} ms, p99 {p99 * 1000:+.1f} ms")


async def overhead(
    engine_kind: EngineKind,
    concurrency: int,
    max_tokens: int,
    rounds: int,
    port: int,
    kv_cache_gib: float,
    sim_options: tuple[tuple[str, str], ...],
    api: str = "chat",
    engine_cpus: str | None = None,
) -> None:
    """Bring up a local cluster and alternate rounds direct/through Orchard; print the table and ratios."""
    if engine_cpus:
        print(isolate_engine(engine_cpus))
    home = Path(tempfile.mkdtemp(prefix="orchard-bench-"))
    model = "sim-model" if engine_kind == "sim" else BUNDLED_NAME
    options = (("max-concurrency", "256"), *sim_options)
    config = local.LocalClusterConfig(
        engine=engine_kind, model=model, port=port, home=home, kv_cache_gib=kv_cache_gib, sim_options=options
    )
    print(f"bringing up a local {engine_kind} cluster (logs in {home / 'logs'})…")
    state = await asyncio.to_thread(local.start, config, detached=False, report=lambda m: print("  " + m))
    try:
        engine = await asyncio.to_thread(engine_url, state.agent_address, local.router_tls(home))
        if engine_cpus:
            print(f"moved the engine's {move_engine(state.agent_pid, engine_cpus)} threads to CPUs {engine_cpus}")
        print(
            f"engine {engine}, router {state.url}; {concurrency} concurrent streams x {max_tokens} tokens on "
            f"{PATHS[api]}"
        )
        await run_round("warmup", engine, model, concurrency, max_tokens, seed=-1, api=api)
        urls, results, own = {"direct": engine, "router": state.url}, [], OwnCpu(state.router_pid, state.agent_pid)
        for i in range(rounds):
            for target in ("direct", "router") if i % 2 == 0 else ("router", "direct"):
                before = own.seconds()
                results.append(await run_round(target, urls[target], model, concurrency, max_tokens, i, api=api))
                if target == "router":
                    own.add(own.seconds() - before, results[-1])
        print_table(results)
        own.report()
    finally:
        await asyncio.to_thread(local.stop, home)


def isolate_engine(cpus: str) -> str:
    """Keep a CPU engine on `cpus` (e.g. "1": vLLM's OMP threads bound there now, its processes moved there by
    move_engine once started) and this client, the router and the agent on the other cores: as on a Mac, where
    the model computes on the GPU and Orchard's CPU is not taken from it. Linux only (CPU affinity)."""
    if sys.platform != "linux":
        raise SystemExit("--engine-cpus needs Linux (CPU affinity); on a Mac the engine computes on the GPU")
    else:  # a branch, not a fall-through: mypy --platform darwin then knows the calls below are Linux's
        engine = cpu_set(cpus)
        rest = set(os.sched_getaffinity(0)) - engine
        if not rest or not engine:
            raise SystemExit(f"--engine-cpus {cpus}: must leave some of CPUs {sorted(os.sched_getaffinity(0))} free")
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpus
        os.sched_setaffinity(0, rest)  # inherited by the router and agent started from here (the engine: moved)
        return f"engine on CPUs {sorted(engine)}; this client, the router and the agent on {sorted(rest)}"


def move_engine(agent_pid: int, cpus: str) -> int:
    """Move every thread of the engine's processes (the agent's descendants but itself) onto `cpus`; new
    threads inherit it. Returns how many threads moved."""
    where, moved = cpu_set(cpus), 0
    if sys.platform != "linux":
        return moved
    for process in psutil.Process(agent_pid).children(recursive=True):
        if not any(p in " ".join(process.cmdline()) for p in OwnCpu.PROGRAMS):
            for thread in process.threads():
                os.sched_setaffinity(thread.id, where)
                moved += 1
    return moved


def cpu_set(cpus: str) -> set[int]:
    """ "1", "0,2" or "2-3" as CPU numbers."""
    spans = (part.partition("-") for part in cpus.split(","))
    return {cpu for low, _, high in spans for cpu in range(int(low), int(high or low) + 1)}


class OwnCpu:
    """CPU time Orchard's own processes (router, agent; not the engine) spend during the routed rounds: on two
    shared cores it is taken from a CPU engine, which is what a ratio below 1 measures there (a Mac's engine
    computes on its GPU)."""

    PROGRAMS = ("cluster.router", "worker.agent", "orchard-worker")

    def __init__(self, *pids: int) -> None:
        tops = [psutil.Process(pid) for pid in pids]  # the router's and agent's, or their keepers'
        kept = [c for top in tops for c in top.children() if any(p in " ".join(c.cmdline()) for p in self.PROGRAMS)]
        self.processes = tops + kept  # not the engine: the agent's child
        self.cpu_s = self.wall_s = 0.0
        self.tokens = 0

    def seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.processes)

    def add(self, cpu_s: float, result: RoundResult) -> None:
        self.cpu_s, self.wall_s, self.tokens = (
            self.cpu_s + cpu_s,
            self.wall_s + result.wall_s,
            self.tokens + result.output_tokens,
        )

    def report(self) -> None:
        cores = os.cpu_count() or 1
        print(
            f"router+agent CPU during the routed rounds: {self.cpu_s:.1f} s in {self.wall_s:.1f} s = "
            f"{self.cpu_s / self.wall_s / cores:.1%} of {cores} cores ({self.cpu_s * 1000 / max(self.tokens, 1):.2f} "
            "ms per streamed token)"
        )


async def mtls_cost(
    engine_kind: EngineKind,
    concurrency: int,
    max_tokens: int,
    rounds: int,
    port: int,
    kv_cache_gib: float,
    sim_options: tuple[tuple[str, str], ...],
) -> None:
    """Two local clusters alike but for router↔agent mutual TLS; rounds alternate between their routers."""
    model = "sim-model" if engine_kind == "sim" else BUNDLED_NAME
    options = (("max-concurrency", "256"), *sim_options)
    homes = {name: Path(tempfile.mkdtemp(prefix=f"orchard-bench-{name}-")) for name in ("plain", "mtls")}
    urls: dict[str, str] = {}
    try:
        for offset, (name, home) in enumerate(homes.items()):
            config = local.LocalClusterConfig(
                engine=engine_kind,
                model=model,
                port=port + offset,
                home=home,
                kv_cache_gib=kv_cache_gib,
                sim_options=options,
                plaintext_agents=name == "plain",
            )
            print(f"bringing up the {name} cluster (logs in {home / 'logs'})…")
            state = await asyncio.to_thread(local.start, config, detached=False, report=lambda m: print("  " + m))
            urls[name] = state.url
        print(f"{concurrency} concurrent streams x {max_tokens} tokens; plaintext {urls['plain']}, mTLS {urls['mtls']}")
        for url in urls.values():
            await run_round("warmup", url, model, concurrency, max_tokens, seed=-1)
        results = []
        for i in range(rounds):
            for name in ("plain", "mtls") if i % 2 == 0 else ("mtls", "plain"):
                results.append(await run_round(name, urls[name], model, concurrency, max_tokens, seed=i))
        print_table(results, base="plain", other="mtls", what="mutual TLS")
    finally:
        for home in homes.values():
            await asyncio.to_thread(local.stop, home)
