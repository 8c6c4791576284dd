"""Latency the router + agent add to each streamed chunk, measured per chunk with the sim engine's send stamps.

    python -m cluster.bench latency [--streams 64 --max-tokens 32 --rounds 3 --sim-option decode-ms-per-token=20]

The sim engine (option stamp-chunks=1) writes its wall-clock send time into every chunk; the client notes when
it receives that chunk. The same load goes to the engine directly and through router + agent, in alternating
rounds; the difference of the one-way chunk latencies is what Orchard's streaming path adds (the router
forwards chunks unchanged, so the stamp survives). Client, router, agent and engine share this machine's
clock. Time to first token is reported too, but it also holds the engine's prefill queue, so it is noisier.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from cluster import local


@dataclass(frozen=True)
class LatencyRound:
    target: str
    chunk_ms: tuple[float, ...]  # receive time - engine send time, per chunk
    ttft_ms: tuple[float, ...]
    wall_s: float
    errors: int

    @property
    def chunks_per_s(self) -> float:
        return len(self.chunk_ms) / self.wall_s if self.wall_s else 0.0


def pct(values: tuple[float, ...] | list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> tuple[list[float], float]:
    started = time.perf_counter()
    latencies: list[float] = []
    ttft = 0.0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            received = time.time_ns()
            if not line.startswith("data: {"):
                continue
            sent = json.loads(line[6:]).get("orchard_sent_ns")
            if sent is None:
                raise RuntimeError("chunks carry no orchard_sent_ns: start the sim engine with stamp-chunks=1")
            latencies.append((received - sent) / 1e6)
            if not ttft:
                ttft = (time.perf_counter() - started) * 1000
    return latencies, ttft


async def run_round(target: str, url: str, model: str, streams: int, max_tokens: int, seed: int) -> LatencyRound:
    limits = httpx.Limits(max_connections=streams * 2, max_keepalive_connections=streams * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        bodies = [{"model": model, "messages": [{"role": "user", "content": f"round {seed} stream {i}"}],
                   "max_tokens": max_tokens, "temperature": 0, "stream": True} for i in range(streams)]  # fmt: skip
        started = time.perf_counter()
        results = await asyncio.gather(*(_stream(client, url, b) for b in bodies), return_exceptions=True)
        wall = time.perf_counter() - started
    ok = [r for r in results if isinstance(r, tuple)]
    return LatencyRound(
        target=target,
        chunk_ms=tuple(v for latencies, _ in ok for v in latencies),
        ttft_ms=tuple(ttft for _, ttft in ok),
        wall_s=wall,
        errors=len(results) - len(ok),
    )


async def measure(
    streams: int, max_tokens: int, rounds: int, sim_options: tuple[str, ...], port: int
) -> list[LatencyRound]:
    from cluster.bench import _engine_url

    home = Path(tempfile.mkdtemp(prefix="orchard-bench-latency-"))
    options = ("stamp-chunks=1", "max-concurrency=256", *sim_options)
    config = local.LocalClusterConfig(engine="sim", model="sim-model", port=port, home=home, sim_options=options)
    print(f"bringing up a local sim cluster ({' '.join(options)}; logs in {home / 'logs'})…")
    state = await asyncio.to_thread(local.start, config, detached=False, report=lambda m: print("  " + m))
    try:
        engine = await asyncio.to_thread(_engine_url, state.agent_address)
        print(f"engine {engine}, router {state.url}; {streams} concurrent streams x {max_tokens} tokens")
        await run_round("warmup", state.url, "sim-model", streams, 4, seed=-1)
        results = []
        for i in range(rounds):
            results.append(await run_round("direct", engine, "sim-model", streams, max_tokens, seed=i))
            results.append(await run_round("router", state.url, "sim-model", streams, max_tokens, seed=i))
        return results
    finally:
        await asyncio.to_thread(local.stop, state)


def report(results: list[LatencyRound]) -> str:
    lines = [f"{'target':<8}{'chunks/s':>10}{'chunk p50 ms':>14}{'p90':>8}{'p99':>8}{'TTFT p50 ms':>13}{'errors':>8}"]
    for r in results:
        lines.append(f"{r.target:<8}{r.chunks_per_s:>10.0f}{pct(r.chunk_ms, 0.5):>14.2f}{pct(r.chunk_ms, 0.9):>8.2f}"
                     f"{pct(r.chunk_ms, 0.99):>8.2f}{pct(r.ttft_ms, 0.5):>13.1f}{r.errors:>8}")  # fmt: skip
    direct = [r for r in results if r.target == "direct"]
    routed = [r for r in results if r.target == "router"]

    def added(q: float) -> float:
        return statistics.mean(pct(r.chunk_ms, q) for r in routed) - statistics.mean(pct(r.chunk_ms, q) for r in direct)

    ttft = statistics.mean(pct(r.ttft_ms, 0.5) for r in routed) - statistics.mean(pct(r.ttft_ms, 0.5) for r in direct)
    lines.append(f"\nadded per chunk by router + agent: p50 {added(0.5):+.2f} ms, p90 {added(0.9):+.2f} ms, "
                 f"p99 {added(0.99):+.2f} ms; added TTFT p50 {ttft:+.1f} ms")  # fmt: skip
    return "\n".join(lines)
