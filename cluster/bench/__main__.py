"""Benchmarks that print figures. Not tests: run them by hand and read the table.

    python -m cluster.bench overhead [--engine sim|vllm] [--concurrency 32] [--max-tokens 128] [--rounds 2]
    python -m cluster.bench decide [--workers 64]
    python -m cluster.bench routing [--workers 4 --workload shared_prefix --rate 20 --requests 200]
    python -m cluster.bench calibrate --url http://127.0.0.1:8000 --model NAME
    python -m cluster.bench latency [--streams 64 --max-tokens 32 --rounds 3 --sim-option KEY=VALUE]
    python -m cluster.bench chaos [--streams 64 --settle 10 --faults kill-engine,drain --max-tokens 64
                                   --sim-decode-ms 50]   (root: a lab of 3 SSH hosts in network namespaces)
    python -m cluster.bench fanout [--hosts 3 --rate 200mbit --size-mb 300]   (root: namespace hosts, tc)
    python -m cluster.bench capacity [--workers 4,16,64 --streams 256 --max-tokens 256 --baseline-src DIR]
    python -m cluster.bench demand [--hosts 4 --models 20 --usable-gb 20 --model-gb 6 --requests 400 --zipf 1.1]

Each benchmark is its own module here; `client.py` holds what they share (timed SSE reading, percentiles).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from pathlib import Path

from rich.console import Console

from cluster.bench import (
    calibrate,
    capacity,
    chaos,
    decide,
    demand,
    fairness,
    fanout,
    gateway,
    latency,
    metrics_cost,
    netlab,
    overhead,
    routing,
)
from worker.shared.launch import ENGINE_KINDS, POLICIES, key_value


def _policies(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    if unknown := [p for p in chosen if p not in POLICIES]:
        raise argparse.ArgumentTypeError(f"unknown policy {', '.join(unknown)} (choose from {', '.join(POLICIES)})")
    return chosen


def _word_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(",")
    try:
        bounds = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX words, got {text!r}") from None
    if not 0 < bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX, got {text!r}")
    return bounds


def _worker_option(text: str) -> tuple[int, tuple[str, str]]:
    index, sep, option = text.partition(":")
    if not sep or not index.isdigit() or "=" not in option:
        raise argparse.ArgumentTypeError(f"expected INDEX:KEY=VALUE (e.g. 0:decode-ms-per-token=47), got {text!r}")
    return int(index), key_value(option)


def _faults(text: str) -> tuple[str, ...]:
    chosen = tuple(f.strip() for f in text.split(",") if f.strip())
    if unknown := [f for f in chosen if f not in chaos.FAULTS]:
        raise argparse.ArgumentTypeError(f"unknown fault {', '.join(unknown)}; known: {','.join(chaos.FAULTS)}")
    return chosen


def _chaos_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("chaos", help="faults injected into a namespace lab under load (needs root)")
    cmd.add_argument("--streams", type=int, default=64, help="concurrent streaming requests (closed loops)")
    cmd.add_argument("--settle", type=float, default=10.0, help="seconds of calm before and after each fault")
    cmd.add_argument(
        "--faults",
        type=_faults,
        default=chaos.FAULTS,
        metavar="A,B",
        help=f"a comma list, run in the order given, from: {','.join(chaos.FAULTS)}",
    )
    cmd.add_argument("--max-tokens", type=int, default=64)
    cmd.add_argument("--sim-decode-ms", type=float, default=50.0, help="per token: a stream lasts a few seconds")
    cmd.add_argument("--sim-option", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    cmd.add_argument("--deadline", type=float, default=60.0, help="a request not done within it counts as hung")
    cmd.add_argument("--stop-seconds", type=float, default=20.0, help="how long the agent stays SIGSTOPped")
    cmd.add_argument("--link-seconds", type=float, default=15.0, help="how long the host's link stays down")
    cmd.add_argument("--recovery-timeout", type=float, default=60.0)
    cmd.add_argument("--vllm", action="store_true", help="h3 runs the real vLLM engine on the bundled model")
    cmd.set_defaults(func=_chaos)


def _fanout_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("fanout", help="one model onto 1..N shaped namespace hosts: pipeline vs sequential (root)")
    cmd.add_argument("--hosts", type=int, default=3)
    cmd.add_argument("--rate", default="200mbit", help="each host's link, in tc's units")
    cmd.add_argument("--size-mb", type=int, help="random weights of this size (default: the bundled model)")
    cmd.set_defaults(func=lambda args: fanout.run(args.hosts, args.rate, args.size_mb, Console()))


def _demand_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("demand", help="more models than memory, Zipf requests: on demand vs the hottest pinned")
    defaults = demand.Mix()
    for field in dataclasses.fields(demand.Mix):
        flag = "--" + field.name.replace("_", "-")
        cmd.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    cmd.set_defaults(
        func=lambda args: demand.run(
            demand.Mix(**{f.name: getattr(args, f.name) for f in dataclasses.fields(demand.Mix)}), Console()
        )
    )


def _chaos(args: argparse.Namespace) -> None:
    if reason := netlab.available():
        sys.exit(f"python -m cluster.bench chaos {reason}")
    config = chaos.ChaosConfig(
        streams=args.streams,
        settle_s=args.settle,
        faults=args.faults,
        max_tokens=args.max_tokens,
        sim_options=(("decode-ms-per-token", f"{args.sim_decode_ms:g}"), *args.sim_option),
        deadline_s=args.deadline,
        stop_s=args.stop_seconds,
        link_s=args.link_seconds,
        recovery_timeout_s=args.recovery_timeout,
        vllm=args.vllm,
    )

    def _stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM tears the lab down like Ctrl-C

    signal.signal(signal.SIGTERM, _stop)
    try:
        chaos.run(config, Console(highlight=False, width=None if sys.stdout.isatty() else 160))
    except (chaos.ChaosError, RuntimeError) as exc:  # the lab's own failures are RuntimeErrors
        sys.exit(f"python -m cluster.bench chaos: {exc}")
    except KeyboardInterrupt:
        sys.exit("python -m cluster.bench chaos: interrupted (the lab was taken down)")


def _overhead_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("overhead", help="router+agent overhead vs the engine directly")
    cmd.add_argument("--engine", choices=ENGINE_KINDS, default="sim")
    cmd.add_argument("--concurrency", type=int, default=32)
    cmd.add_argument("--max-tokens", type=int, default=128)
    cmd.add_argument("--rounds", type=int, default=2)
    cmd.add_argument("--port", type=int, default=8090)
    cmd.add_argument("--kv-cache-gib", type=float, default=1.0)
    cmd.add_argument("--sim-decode-ms", type=float, default=5.0)
    cmd.add_argument("--sim-option", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    cmd.add_argument(
        "--api",
        choices=("chat", "messages"),
        default="chat",
        help="stream OpenAI chat completions or Anthropic messages",
    )
    cmd.add_argument(
        "--engine-cpus",
        metavar="LIST",
        help="vllm on Linux: the engine (server and compute) runs on these CPUs (e.g. 1), "
        "this client, router and agent on the others: Orchard's CPU is not the "
        "engine's, as on a Mac whose engine computes on the GPU",
    )
    cmd.add_argument(
        "--compare-mtls",
        action="store_true",
        help="compare two local clusters, router↔agent with mutual TLS and without",
    )
    cmd.set_defaults(func=_overhead)


def _overhead(args: argparse.Namespace) -> None:
    options = (("decode-ms-per-token", str(args.sim_decode_ms)), *args.sim_option)
    if args.compare_mtls:
        asyncio.run(
            overhead.mtls_cost(
                args.engine, args.concurrency, args.max_tokens, args.rounds, args.port, args.kv_cache_gib, options
            )
        )
        return
    asyncio.run(
        overhead.overhead(
            args.engine,
            args.concurrency,
            args.max_tokens,
            args.rounds,
            args.port,
            args.kv_cache_gib,
            options,
            args.api,
            args.engine_cpus,
        )
    )


def _metrics_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("metrics", help="what metrics, activity and the request log add per request")
    cmd.add_argument("--requests", type=int, default=20000)
    cmd.add_argument("--workers", type=int, default=64)
    cmd.set_defaults(func=lambda args: print(metrics_cost.report(metrics_cost.measure(args.requests, args.workers))))


def _decide_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("decide", help="scheduler decision latency (micro-benchmark, no sockets)")
    cmd.add_argument("--workers", type=int, default=64)
    cmd.add_argument("--requests", type=int, default=20000)
    cmd.add_argument("--groups", type=int, default=16)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.set_defaults(func=lambda args: decide.report(args.workers, args.requests, args.groups, args.seed))


def _routing_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("routing", help="every policy on one fleet with the same seeded workload")
    cmd.add_argument("--workers", type=int, default=4)
    cmd.add_argument("--engine", choices=routing.ENGINES, default="sim")
    cmd.add_argument("--model", default="", help="default: sim-model (sim) or the bundled model (vllm)")
    cmd.add_argument("--workload", action="append", choices=routing.WORKLOADS)
    cmd.add_argument("--policies", type=_policies, default=list(POLICIES), help="comma-separated")
    cmd.add_argument("--requests", type=int, default=200)
    cmd.add_argument("--rate", type=float, default=20.0, help="requests per second (Poisson arrivals)")
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--max-tokens", type=int, default=32)
    cmd.add_argument(
        "--system-words",
        type=_word_range,
        default=(750, 3000),
        metavar="MIN,MAX",
        help="shared_prefix system prompt length in words",
    )
    cmd.add_argument("--groups", type=int, default=0, help="shared_prefix system prompts (default requests/25)")
    cmd.add_argument(
        "--sim-option", action="append", default=[], type=key_value, metavar="KEY=VALUE", help="every sim worker"
    )
    cmd.add_argument(
        "--worker-sim-option",
        action="append",
        default=[],
        type=_worker_option,
        metavar="INDEX:KEY=VALUE",
        help="one sim worker (heterogeneous fleets)",
    )
    cmd.add_argument("--engine-arg", action="append", default=[], help="extra engine argument (repeat)")
    cmd.add_argument("--kv-cache-gib", type=float, default=1.0)
    cmd.add_argument("--url", help="drive this OpenAI endpoint as it is (no fleet, one row per workload)")
    cmd.add_argument("--out", default="bench-results/routing.json")
    cmd.set_defaults(func=lambda args: routing.main(routing_config(args)))


def _calibrate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("calibrate", help="measure an engine's costs and print matching sim options")
    cmd.add_argument("--url", required=True, help="the engine's (or any OpenAI endpoint's) base URL")
    cmd.add_argument("--model", required=True)
    cmd.add_argument("--repeats", type=int, default=3)
    cmd.set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> None:
    print(calibrate.report(asyncio.run(calibrate.calibrate(args.url.rstrip("/"), args.model, repeats=args.repeats))))


def _latency_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("latency", help="per-chunk latency router + agent add (sim engine send stamps)")
    cmd.add_argument("--streams", type=int, default=64)
    cmd.add_argument("--max-tokens", type=int, default=32)
    cmd.add_argument("--rounds", type=int, default=3)
    cmd.add_argument("--sim-option", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    cmd.add_argument("--port", type=int, default=8091)
    cmd.set_defaults(func=_latency)


def _latency(args: argparse.Namespace) -> None:
    rounds = asyncio.run(latency.measure(args.streams, args.max_tokens, args.rounds, tuple(args.sim_option), args.port))
    print(latency.report(rounds))


def _fairness_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("fairness", help="two teams on a saturated sim fleet through the fair queue")
    cmd.add_argument("--workers", type=int, default=2)
    cmd.add_argument("--slots", type=int, default=4, help="each agent's concurrency cap")
    cmd.add_argument("--rate-b", type=float, default=2.0, help="team B's requests/s (A sends 10x)")
    cmd.add_argument("--seconds", type=float, default=20.0, help="per scenario")
    cmd.add_argument("--max-tokens", type=int, default=16)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.set_defaults(func=_fairness)


def _fairness(args: argparse.Namespace) -> None:
    config = fairness.FairnessConfig(
        workers=args.workers,
        slots=args.slots,
        rate_b=args.rate_b,
        seconds=args.seconds,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    print(fairness.report(fairness.run(config)))


def _gateway_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("gateway", help="the gateway's cost: keys, limits and usage on vs off")
    cmd.add_argument("--concurrency", type=int, default=32)
    cmd.add_argument("--max-tokens", type=int, default=64)
    cmd.add_argument("--rounds", type=int, default=3)
    cmd.add_argument(
        "--sim-option",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help="after: decode-ms-per-token=5 overhead-ms=1 prefill-ms-per-token=0.01",
    )
    cmd.set_defaults(
        func=lambda args: gateway.run(args.concurrency, args.max_tokens, args.rounds, (*gateway.FAST, *args.sim_option))
    )


def _capacity_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("capacity", help="router CPU per streamed token and rate reached, N sim workers")
    cmd.add_argument("--workers", type=_counts, default=[4, 16, 64], help="comma-separated: 4,16,64")
    cmd.add_argument("--streams", type=int, default=256)
    cmd.add_argument("--max-tokens", type=int, default=256)
    cmd.add_argument(
        "--decode-ms-per-token",
        type=float,
        default=25.0,
        help="each stream's pace (25: 40 tokens/s; 0: the engines at full speed)",
    )
    cmd.add_argument(
        "--lockstep",
        action="store_true",
        help="each engine decodes all its running streams in one step, as continuous batching does (their tokens "
        "come together); without it each stream keeps its own pace",
    )
    cmd.add_argument("--baseline-src", type=Path, help="another checkout: its agents and routers run the same rounds")
    cmd.set_defaults(
        func=lambda args: print(
            capacity.report(
                capacity.run(
                    args.workers,
                    args.streams,
                    args.max_tokens,
                    args.decode_ms_per_token,
                    args.baseline_src,
                    lockstep=args.lockstep,
                )
            )
        )
    )


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 4,16,64, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be 1 or more, got {text!r}")
    return counts


PARSERS = (
    _capacity_parser,
    _overhead_parser,
    _metrics_parser,
    _decide_parser,
    _routing_parser,
    _calibrate_parser,
    _latency_parser,
    _fairness_parser,
    _gateway_parser,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    _chaos_parser(sub)
    _fanout_parser(sub)
    _demand_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "overhead" and args.api == "messages" and args.engine != "vllm":
        parser.error(f"--api messages needs --engine vllm: the {args.engine} engine does not serve /v1/messages")
    args.func(args)


def routing_config(args: argparse.Namespace) -> routing.RoutingBenchConfig:
    return routing.RoutingBenchConfig(
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


if __name__ == "__main__":
    main()
