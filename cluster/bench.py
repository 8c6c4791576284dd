"""Benchmarks that print figures. Not tests: run them by hand and read the table.

    python -m cluster.bench overhead [--engine sim|vllm] [--concurrency 32] [--max-tokens 128] [--rounds 2]
    python -m cluster.bench decide [--workers 64]
    python -m cluster.bench routing [--workers 4 --workload shared_prefix --rate 20 --requests 200]
    python -m cluster.bench calibrate --url http://127.0.0.1:8000 --model NAME
    python -m cluster.bench latency [--streams 64 --max-tokens 32 --rounds 3 --sim-option KEY=VALUE]

`overhead` brings up a local cluster, then sends the same streaming load to the engine directly and through
router + agent, alternating, in one run; it prints throughput and time to first token for both and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from cluster import local
from cluster.models import BUNDLED_NAME
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc


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
        ordered = sorted(self.ttfts)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _one_stream(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> tuple[float, int]:
    started = time.perf_counter()
    ttft, tokens = 0.0, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    tokens += 1
                    if not ttft:
                        ttft = time.perf_counter() - started
    return ttft, tokens


async def run_round(target: str, url: str, model: str, concurrency: int, max_tokens: int, seed: int) -> RoundResult:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        bodies = [
            {
                "model": model,
                "messages": [{"role": "user", "content": f"Request {seed}-{i}: tell me a long story about orchards."}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,  # vLLM: always produce max_tokens, so every round does the same work
                "stream": True,
            }
            for i in range(concurrency)
        ]
        started = time.perf_counter()
        results = await asyncio.gather(*(_one_stream(client, url, b) for b in bodies), return_exceptions=True)
        wall = time.perf_counter() - started
    ok = [r for r in results if isinstance(r, tuple)]
    return RoundResult(
        target=target,
        wall_s=wall,
        output_tokens=sum(tokens for _, tokens in ok),
        ttfts=tuple(ttft for ttft, _ in ok),
        errors=len(results) - len(ok),
    )


def _engine_url(agent_address: str) -> str:
    with grpc.insecure_channel(agent_address) as channel:
        info: pb.InfoReply = pb_grpc.WorkerStub(channel).Info(pb.InfoRequest(), timeout=10)
    return info.engine_url


def _print_table(results: list[RoundResult]) -> None:
    print(f"{'target':<8} {'round':>5} {'tok/s':>9} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'errors':>6}")
    rounds: dict[str, int] = {}
    for r in results:
        rounds[r.target] = rounds.get(r.target, 0) + 1
        print(
            f"{r.target:<8} {rounds[r.target]:>5} {r.throughput:>9.1f} {r.ttft_pct(0.5) * 1000:>12.1f} "
            f"{r.ttft_pct(0.99) * 1000:>12.1f} {r.errors:>6}"
        )
    direct = [r for r in results if r.target == "direct"]
    routed = [r for r in results if r.target == "router"]
    ratio = statistics.mean(r.throughput for r in routed) / statistics.mean(r.throughput for r in direct)
    p50 = statistics.mean(r.ttft_pct(0.5) for r in routed) - statistics.mean(r.ttft_pct(0.5) for r in direct)
    p99 = statistics.mean(r.ttft_pct(0.99) for r in routed) - statistics.mean(r.ttft_pct(0.99) for r in direct)
    print(f"\nthroughput ratio router/direct: {ratio:.3f}")
    print(f"added TTFT through router+agent: p50 {p50 * 1000:+.1f} ms, p99 {p99 * 1000:+.1f} ms")


async def _overhead(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="orchard-bench-"))
    model = BUNDLED_NAME if args.engine == "vllm" else "sim-model"
    config = local.LocalClusterConfig(
        engine=args.engine,
        model=model,
        port=args.port,
        home=home,
        kv_cache_gib=args.kv_cache_gib,
        sim_options=(f"decode-ms-per-token={args.sim_decode_ms}", "max-concurrency=256", *args.sim_option),
    )
    print(f"bringing up a local {args.engine} cluster (logs in {home / 'logs'})…")
    state = await asyncio.to_thread(local.start, config, detached=False, report=lambda m: print("  " + m))
    try:
        engine = await asyncio.to_thread(_engine_url, state.agent_address)
        print(f"engine {engine}, router {state.url}; {args.concurrency} concurrent streams x {args.max_tokens} tokens")
        await run_round("warmup", engine, model, args.concurrency, args.max_tokens, seed=-1)
        results = []
        for i in range(args.rounds):
            results.append(await run_round("direct", engine, model, args.concurrency, args.max_tokens, seed=2 * i))
            results.append(await run_round("router", state.url, model, args.concurrency, args.max_tokens, 2 * i + 1))
        _print_table(results)
    finally:
        await asyncio.to_thread(local.stop, home)


def decision_latency(workers: int, requests: int, groups: int, seed: int) -> list[float]:
    """Seconds per routing decision (prefix policy, including the index update) on a warm index."""
    import random

    from cluster.routing.prefix_index import block_hashes
    from cluster.scheduler import RequestView, RoutingState, WorkerView, choose

    rng = random.Random(seed)
    systems = [f"System prompt {g}: " + " ".join(rng.choice(("apple", "pear", "plum", "fig")) for _ in range(600))
               for g in range(groups)]  # fmt: skip
    views = [WorkerView(f"w{i}", True, inflight=rng.randint(0, 4), prefill_tokens_per_s=rng.uniform(2e3, 8e3),
                         decode_tokens_per_s=rng.uniform(20, 80))
             for i in range(workers)]  # fmt: skip
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


def _decide(args: argparse.Namespace) -> None:
    timings = sorted(decision_latency(args.workers, args.requests, args.groups, args.seed))
    p50, p99 = timings[len(timings) // 2], timings[int(len(timings) * 0.99)]
    print(f"prefix policy, {args.workers} workers, {args.groups} prompt groups, warm index, {len(timings)} decisions")
    print(f"decision incl. hashing and index update: p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms")


def _word_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(",")
    try:
        bounds = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX words, got {text!r}") from None
    if not 0 < bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX, got {text!r}")
    return bounds


def _worker_option(text: str) -> tuple[int, str]:
    index, sep, option = text.partition(":")
    if not sep or not index.isdigit() or "=" not in option:
        raise argparse.ArgumentTypeError(f"expected INDEX:KEY=VALUE (e.g. 0:decode-ms-per-token=47), got {text!r}")
    return int(index), option


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    overhead = sub.add_parser("overhead", help="router+agent overhead vs the engine directly")
    overhead.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    overhead.add_argument("--concurrency", type=int, default=32)
    overhead.add_argument("--max-tokens", type=int, default=128)
    overhead.add_argument("--rounds", type=int, default=2)
    overhead.add_argument("--port", type=int, default=8090)
    overhead.add_argument("--kv-cache-gib", type=float, default=1.0)
    overhead.add_argument("--sim-decode-ms", type=float, default=5.0)
    overhead.add_argument("--sim-option", action="append", default=[], metavar="KEY=VALUE")
    decide = sub.add_parser("decide", help="scheduler decision latency (micro-benchmark, no sockets)")
    decide.add_argument("--workers", type=int, default=64)
    decide.add_argument("--requests", type=int, default=20000)
    decide.add_argument("--groups", type=int, default=16)
    decide.add_argument("--seed", type=int, default=0)
    routing = sub.add_parser("routing", help="every policy on one fleet with the same seeded workload")
    routing.add_argument("--workers", type=int, default=4)
    routing.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    routing.add_argument("--model", default="", help="default: sim-model (sim) or the bundled model (vllm)")
    routing.add_argument("--workload", action="append", choices=("shared_prefix", "multi_turn", "random"))
    routing.add_argument("--policies", type=lambda s: s.split(","), default=["prefix", "least_loaded", "round_robin"])
    routing.add_argument("--requests", type=int, default=200)
    routing.add_argument("--rate", type=float, default=20.0, help="requests per second (Poisson arrivals)")
    routing.add_argument("--seed", type=int, default=0)
    routing.add_argument("--max-tokens", type=int, default=32)
    routing.add_argument("--system-words", type=_word_range, default=(750, 3000), metavar="MIN,MAX",
                         help="shared_prefix system prompt length in words")  # fmt: skip
    routing.add_argument("--groups", type=int, default=0, help="shared_prefix system prompts (default requests/25)")
    routing.add_argument("--sim-option", action="append", default=[], metavar="KEY=VALUE", help="every sim worker")
    routing.add_argument("--worker-sim-option", action="append", default=[], type=_worker_option,
                         metavar="INDEX:KEY=VALUE", help="one sim worker (heterogeneous fleets)")  # fmt: skip
    routing.add_argument("--engine-arg", action="append", default=[], help="extra engine argument (repeat)")
    routing.add_argument("--kv-cache-gib", type=float, default=1.0)
    routing.add_argument("--url", help="drive this OpenAI endpoint as it is (no fleet, one row per workload)")
    routing.add_argument("--out", default="bench-results/routing.json")
    calibrate = sub.add_parser("calibrate", help="measure an engine's costs and print matching sim options")
    calibrate.add_argument("--url", required=True, help="the engine's (or any OpenAI endpoint's) base URL")
    calibrate.add_argument("--model", required=True)
    calibrate.add_argument("--repeats", type=int, default=3)
    latency = sub.add_parser("latency", help="per-chunk latency router + agent add (sim engine send stamps)")
    latency.add_argument("--streams", type=int, default=64)
    latency.add_argument("--max-tokens", type=int, default=32)
    latency.add_argument("--rounds", type=int, default=3)
    latency.add_argument("--sim-option", action="append", default=[], metavar="KEY=VALUE")
    latency.add_argument("--port", type=int, default=8091)
    args = parser.parse_args(argv)
    if args.command == "latency":
        from cluster import bench_latency

        rounds = asyncio.run(
            bench_latency.measure(args.streams, args.max_tokens, args.rounds, tuple(args.sim_option), args.port)
        )
        print(bench_latency.report(rounds))
    elif args.command == "calibrate":
        from cluster.calibrate import calibrate as run_calibration
        from cluster.calibrate import report

        print(report(asyncio.run(run_calibration(args.url.rstrip("/"), args.model, repeats=args.repeats))))
    elif args.command == "decide":
        _decide(args)
    elif args.command == "routing":
        from cluster.bench_routing import RoutingBenchConfig
        from cluster.bench_routing import main as routing_main

        routing_main(
            RoutingBenchConfig(
                workers=args.workers,
                engine=args.engine,
                model=args.model,
                workloads=tuple(args.workload or ["shared_prefix"]),
                policies=tuple(args.policies),
                requests=args.requests,
                rate=args.rate,
                seed=args.seed,
                max_tokens=args.max_tokens,
                system_words=args.system_words,
                groups=args.groups,
                sim_options=tuple(args.sim_option),
                worker_sim_options=tuple(args.worker_sim_option),
                engine_args=tuple(args.engine_arg),
                kv_cache_gib=args.kv_cache_gib,
                url=args.url.rstrip("/") if args.url else None,
                out=Path(args.out),
            )
        )
    else:
        asyncio.run(_overhead(args))


if __name__ == "__main__":
    main()
