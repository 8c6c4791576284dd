"""Latency Orchard adds to each streamed chunk, measured per chunk with the sim engine's send stamps.

    python -m cluster.bench latency [--streams 64 --max-tokens 32 --rounds 3 --sim-option decode-ms-per-token=20]

The sim engine (option stamp-chunks=1) writes its wall-clock send time into every chunk; the client notes when
it receives that chunk. The same load goes, in rotating rounds, to the engine directly (HTTP), to the agent
directly (gRPC, as the router talks to it) and through the router (HTTP); chunks are forwarded unchanged, so
the stamp survives every hop. agent - engine is what the agent adds, router - agent what the router adds.
Client, router, agent and engine share this machine's clock. Time to first token (first content chunk) is
reported too; it also holds the engine's prefill queue, so it is noisier.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cluster.bench.client import engine_url, pct, sse_chunks
from cluster.bringup import local
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.shared import tls


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


class _Chunks:
    """Per-chunk one-way latency and time to the first content chunk of one stream."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.latencies: list[float] = []
        self.ttft = 0.0

    def observe(self, chunk: dict[str, Any], received_ns: int) -> None:
        sent = chunk.get("orchard_sent_ns")
        if sent is None:
            raise RuntimeError("chunks carry no orchard_sent_ns: start the sim engine with stamp-chunks=1")
        self.latencies.append((received_ns - sent) / 1e6)
        if not self.ttft and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
            self.ttft = (time.perf_counter() - self.started) * 1000


async def _http_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> _Chunks:
    seen = _Chunks()
    async for arrival in sse_chunks(client, url, "/v1/chat/completions", body):
        seen.observe(arrival.chunk, arrival.wall_ns)
    return seen


async def _grpc_stream(stub: pb_grpc.WorkerStub, body: dict[str, Any]) -> _Chunks:
    seen = _Chunks()
    request = pb.GenerateRequest(
        endpoint=pb.ENDPOINT_CHAT_COMPLETIONS, body=json.dumps(body).encode(), stream=bool(body.get("stream"))
    )
    async for reply in stub.Generate(request):
        received = time.time_ns()
        for item in reply.chunks.items if reply.HasField("chunks") else ():
            seen.observe(json.loads(item), received)
    return seen


async def run_round(
    target: str, url: str, model: str, streams: int, max_tokens: int, seed: int, tls_dir: Path | None = None
) -> LatencyRound:
    """One round of `streams` concurrent streams; `url` is http://… (engine, router) or an agent's host:port."""
    limits = httpx.Limits(max_connections=streams * 2, max_keepalive_connections=streams * 2)
    bodies = [
        {
            "model": model,
            "messages": [{"role": "user", "content": f"round {seed} stream {i}"}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
        for i in range(streams)
    ]
    started = time.perf_counter()
    if url.startswith("http"):
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
            results = await asyncio.gather(*(_http_stream(client, url, b) for b in bodies), return_exceptions=True)
    else:
        async with tls.channel(url, tls_dir) as channel:
            stub = pb_grpc.WorkerStub(channel)
            results = await asyncio.gather(*(_grpc_stream(stub, b) for b in bodies), return_exceptions=True)
    wall = time.perf_counter() - started
    ok = [r for r in results if isinstance(r, _Chunks)]
    return LatencyRound(
        target=target,
        chunk_ms=tuple(v for r in ok for v in r.latencies),
        ttft_ms=tuple(r.ttft for r in ok),
        wall_s=wall,
        errors=len(results) - len(ok),
    )


async def measure(
    streams: int, max_tokens: int, rounds: int, sim_options: tuple[tuple[str, str], ...], port: int
) -> list[LatencyRound]:
    home = Path(tempfile.mkdtemp(prefix="orchard-bench-latency-"))
    options = (("stamp-chunks", "1"), ("max-concurrency", "256"), *sim_options)
    config = local.LocalClusterConfig(engine="sim", model="sim-model", port=port, home=home, sim_options=options)
    print(f"bringing up a local sim cluster ({' '.join(f'{k}={v}' for k, v in options)}; logs in {home / 'logs'})…")
    state = await asyncio.to_thread(local.start, config, detached=False, report=lambda m: print("  " + m))
    try:
        engine = await asyncio.to_thread(engine_url, state.agent_address, local.router_tls(home))
        print(f"engine {engine}, router {state.url}; {streams} concurrent streams x {max_tokens} tokens")
        await run_round("warmup", state.url, "sim-model", streams, 4, seed=-1)
        results = []
        for i in range(rounds):
            for target, url in (("engine", engine), ("agent", state.agent_address), ("router", state.url)):
                results.append(
                    await run_round(target, url, "sim-model", streams, max_tokens, i, local.router_tls(home))
                )
        return results
    finally:
        await asyncio.to_thread(local.stop, home)


def report(results: list[LatencyRound]) -> str:
    lines = [f"{'target':<8}{'chunks/s':>10}{'chunk p50 ms':>14}{'p90':>8}{'p99':>8}{'TTFT p50 ms':>13}{'errors':>8}"]
    for r in results:
        lines.append(
            f"{r.target:<8}{r.chunks_per_s:>10.0f}{pct(r.chunk_ms, 0.5):>14.2f}{pct(r.chunk_ms, 0.9):>8.2f}"
            f"{pct(r.chunk_ms, 0.99):>8.2f}{pct(r.ttft_ms, 0.5):>13.1f}{r.errors:>8}"
        )

    def mean_pct(target: str, q: float, field: str = "chunk_ms") -> float:
        return statistics.mean(pct(getattr(r, field), q) for r in results if r.target == target)

    pairs = (("agent", "engine", "agent"), ("router", "agent", "router"), ("router", "engine", "both"))
    for upper, lower, who in pairs:
        added = [mean_pct(upper, q) - mean_pct(lower, q) for q in (0.5, 0.9, 0.99)]
        ttft = mean_pct(upper, 0.5, "ttft_ms") - mean_pct(lower, 0.5, "ttft_ms")
        lines.append(
            f"added per chunk by {who:<7}({upper} - {lower}): p50 {added[0]:+.2f} ms, p90 {added[1]:+.2f} ms, "
            f"p99 {added[2]:+.2f} ms; TTFT p50 {ttft:+.1f} ms"
        )
    return "\n".join(lines)
