"""Router capacity: the head's CPU per streamed token, the rate one router reaches, and the latency it adds.

    python -m cluster.bench capacity [--workers 4,16,64] [--streams 256] [--max-tokens 256]
                                     [--decode-ms-per-token 25] [--lockstep] [--baseline-src DIR]

N sim agents (each a real agent and a sim engine that stamps every chunk with its send time), then routers over
them in turn: one with the gateway (keys, limits, usage rows; metrics and the request log are always on) and one
without. With --baseline-src (another checkout, e.g. `git worktree add /tmp/base HEAD~3`), that checkout's agents
and routers run the same rounds in the same run, one build after the other: before and after, side by side.
With --lockstep each sim decodes all its running streams in one step, as a continuous-batching engine does (a
real engine's tokens for its streams come together; without it every stream keeps its own timer).

Per router and N, one round of S concurrent chat streams of T tokens (round robin, as a fair spread):
- router µs/token: the router process's own CPU time (user + system) over the round / tokens the client got;
  (loop): the part spent by its event loop's thread (the Python code); the rest is gRPC's own I/O threads;
- tokens/s reached, and the router's CPU in cores (under 1.0: one process was enough at that rate);
- added latency, first token and later tokens, p50/p99: client receive time - the engine's send stamp (what the
  agent and router add together; the clocks are this machine's one clock);
- where the CPU goes: the router's idle cores (watching N agents while nothing streams, measured before the rounds),
  its cost per request (a round of S one-token streams, idle taken off) and per token net of both, and the tokens
  per router write (the client's HTTP client hands over one chunk of the chunked body, one write, at a time; above
  1: the agent and router coalesced tokens that were ready together).
Agents, engines and this client share the machine with the router: on 2 cores their CPU, not the router's, caps
the rate; the router's µs/token is the figure that carries to a head whose agents run on Macs.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import psutil

from cluster.bench.client import pct
from cluster.bringup.fleet import Fleet
from cluster.gateway import keys, store
from worker.shared.launch import AgentConfig, RouterConfig
from worker.shared.procs import free_port

MODEL = "sim-model"
STAMP = re.compile(rb'"orchard_sent_ns":\s*(\d+)')
TEXT = re.compile(rb'"content":\s*"[^"]')  # a chunk that carries generated text (not the role or the finish)
IDLE_S = 5.0  # how long each router's idle CPU is read (clock ticks are 10 ms: 5 s reads to 0.002 cores)


@dataclass
class Seen:
    """What the client saw of one round."""

    tokens: int = 0
    first_ms: list[float] = field(default_factory=list)  # per stream: the first token's added latency
    later_ms: list[float] = field(default_factory=list)  # every later token's
    writes: int = 0  # the router's writes that brought text (one HTTP chunk each): tokens / writes > 1 coalesced
    errors: int = 0


@dataclass(frozen=True)
class Row:
    router: str
    workers: int
    streams: int
    tokens: int
    wall_s: float
    router_cpu_s: float
    router_loop_s: float  # of which its event loop's thread (Python); the rest is gRPC's own threads
    rest_cpu_s: float  # agents, engines and this client
    first_ms: tuple[float, ...]
    later_ms: tuple[float, ...]
    errors: int
    writes: int = 0
    idle_cores: float = 0.0  # the router's CPU while nothing streams (watching its agents)
    request_us: float = float("nan")  # its CPU per request (setup and end, idle taken off), from one-token streams

    @property
    def net_us_per_token(self) -> float:
        """Per token, with the idle cost and each stream's request cost taken off."""
        spent = self.router_cpu_s - self.idle_cores * self.wall_s - self.streams * self.request_us / 1e6
        return spent / self.tokens * 1e6 if self.tokens else float("nan")

    @property
    def us_per_token(self) -> float:
        return self.router_cpu_s / self.tokens * 1e6 if self.tokens else float("nan")

    @property
    def loop_us_per_token(self) -> float:
        return self.router_loop_s / self.tokens * 1e6 if self.tokens else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


async def _stream(client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes, seen: Seen) -> None:
    """One stream, read lean (regular expressions on the bytes, no JSON): the client must not be the bottleneck."""
    pending, first = b"", True
    async with client.stream("POST", url + "/v1/chat/completions", content=body, headers=headers) as response:
        if response.status_code != 200:
            seen.errors += 1
            await response.aread()
            return
        async for raw in response.aiter_raw():
            now = time.time_ns()
            *events, pending = (pending + raw).split(b"\n\n")
            texts = 0
            for event in events:
                stamp = STAMP.search(event)
                if stamp is None or TEXT.search(event) is None:
                    continue
                seen.tokens, texts = seen.tokens + 1, texts + 1
                added = (now - int(stamp.group(1))) / 1e6
                (seen.first_ms if first else seen.later_ms).append(added)
                first = False
            seen.writes += texts > 0


async def _round(url: str, headers: dict[str, str], streams: int, max_tokens: int, seed: int) -> tuple[Seen, float]:
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    seen = Seen()
    bodies = [
        (
            b'{"model":"%s","stream":true,"max_tokens":%d,"temperature":0,'
            b'"messages":[{"role":"user","content":"round %d stream %d"}]}' % (MODEL.encode(), max_tokens, seed, i)
        )
        for i in range(streams)
    ]
    headers = {"content-type": "application/json", **headers}
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        started = time.perf_counter()
        done = await asyncio.gather(*(_stream(client, url, headers, b, seen) for b in bodies), return_exceptions=True)
        wall = time.perf_counter() - started
    seen.errors += sum(1 for d in done if isinstance(d, BaseException))
    return seen, wall


def _loop_s(pid: int) -> float:
    """CPU of the process's main thread (its event loop): on Linux the thread whose id is the pid."""
    try:
        threads = psutil.Process(pid).threads()
    except psutil.NoSuchProcess:
        return 0.0
    main = next((t for t in threads if t.id == pid), None)
    return main.user_time + main.system_time if main else float("nan")


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            family = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in family:
            try:
                times = member.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    return total


@dataclass(frozen=True)
class Router:
    name: str
    url: str
    pid: int
    headers: dict[str, str]


def measure(router: Router, agents: list[int], workers: int, streams: int, max_tokens: int, seed: int) -> Row:
    """One round through one router; CPU read around it (the client's own included in `rest`)."""
    me = psutil.Process()
    before = (_cpu_s([router.pid]), _loop_s(router.pid), _cpu_s(agents) + sum(me.cpu_times()[:2]))
    seen, wall = asyncio.run(_round(router.url, router.headers, streams, max_tokens, seed))
    after = (_cpu_s([router.pid]), _loop_s(router.pid), _cpu_s(agents) + sum(me.cpu_times()[:2]))
    return Row(
        router.name,
        workers,
        streams,
        seen.tokens,
        wall,
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
        tuple(seen.first_ms),
        tuple(seen.later_ms),
        seen.errors,
        seen.writes,
    )


def idle_cores(routers: list[Router], seconds: float) -> dict[str, float]:
    """Each router's CPU in cores while nothing streams: what watching its agents costs, per second."""
    before = {r.name: _cpu_s([r.pid]) for r in routers}
    time.sleep(seconds)
    return {r.name: (_cpu_s([r.pid]) - before[r.name]) / seconds for r in routers}


def request_us(router: Router, agents: list[int], workers: int, streams: int, idle: float) -> float:
    """The router's CPU per request, from a round of one-token streams (its idle cost over the round taken off)."""
    row = measure(router, agents, workers, streams, 1, seed=-2)
    return (row.router_cpu_s - idle * row.wall_s) / streams * 1e6


def _address(taken: set[str]) -> str:
    """A loopback address with a free port not handed out before in this run (free until bound, so 60-odd picks
    in a row can repeat one)."""
    while (address := f"127.0.0.1:{free_port()}") in taken:
        pass
    taken.add(address)
    return address


@dataclass(frozen=True)
class Build:
    """Whose code runs: this checkout's (`source` None) or another's. That checkout's agents and routers start with
    -P (this folder off sys.path) and PYTHONPATH naming it; their engines and tethers start from the working
    directory (run the bench from this checkout's root: the same sim for both builds)."""

    name: str
    source: Path | None = None

    def argv(self, argv: list[str]) -> list[str]:
        return argv if self.source is None else [argv[0], "-P", *argv[1:]]

    @property
    def env(self) -> dict[str, str] | None:
        return None if self.source is None else {"PYTHONPATH": str(self.source)}


def _agents(
    fleet: Fleet, home: Path, workers: int, streams: int, options: tuple[tuple[str, str], ...], build: Build
) -> list[str]:
    per_agent = max(1, -(-streams // workers))
    addresses: list[str] = []
    taken: set[str] = set()
    for i in range(workers):
        agent = AgentConfig(
            listen=_address(taken),
            engine="sim",
            model=MODEL,
            max_concurrency=per_agent * 2,
            log_dir=str(home / "logs" / f"w{i}"),
            sim_options=(("max-concurrency", str(per_agent * 2)), ("stamp-chunks", "1"), *options),
        )
        fleet.spawn(f"agent-w{i}", build.argv(agent.command()), build.env)
        addresses.append(agent.listen)
    return addresses


def _routers(fleet: Fleet, home: Path, addresses: list[str], build: Build) -> list[Router]:
    """A gated and an open router of `build` over the same agents."""
    db = store.db_path(home)
    with store.opened(db) as conn:
        limits = keys.Limits(rpm=10**9, tpm=10**12, monthly_tokens=10**15)  # checked on every request, never bind
        keys.set_team(conn, "bench", {"rpm": 10**9, "tpm": 10**12})
        _, secret = keys.create_key(conn, "bench", limits, admin=False, expires=None)
    routers, taken = [], set(addresses)
    for gated in (True, False):
        config = RouterConfig(
            listen=_address(taken),
            workers=tuple(addresses),
            policy="round_robin",
            # 64 agents on a 2-core machine answer slowly (their own health checks and samples take it):
            # the bench measures the router's cost, not how fast a starved agent accepts a call.
            accept_timeout_s=120.0,
            gap_timeout_s=120.0,
            max_queue=4096,
            max_connections=4096,
            gateway_db=str(db) if gated else None,
        )
        kind = "gateway" if gated else "open"
        child = fleet.spawn(f"router-{kind}", build.argv(config.command()), build.env)
        headers = {"authorization": f"Bearer {secret}"} if gated else {}
        routers.append(Router(f"{build.name}, {kind}", config.local_url, child.pid, headers))
    for router in routers:
        auth = keys.operator_headers(home) if router.headers else None
        fleet.wait_ready(router.url, len(addresses), 600, headers=auth)
    return routers


def run(
    workers: list[int],
    streams: int,
    max_tokens: int,
    decode_ms: float,
    baseline: Path | None,
    lockstep: bool = False,
) -> list[Row]:
    """Per N, each build in turn on its own agents and routers (the first build alternating from one N to the
    next, so a place in the run favours neither)."""
    rows: list[Row] = []
    options: tuple[tuple[str, str], ...] = (
        ("decode-ms-per-token", str(decode_ms)),
        ("overhead-ms", "1"),
        ("prefill-ms-per-token", "0.01"),
    )
    options += (("lockstep", "1"),) if lockstep else ()  # (a baseline's agents from before it would refuse it)
    builds = [Build("now")] + ([Build("before", baseline)] if baseline else [])
    for i, count in enumerate(workers):
        for build in builds[::-1] if i % 2 else builds:
            rows += _build_rounds(build, count, streams, max_tokens, options)
    return rows


def _build_rounds(
    build: Build, count: int, streams: int, max_tokens: int, options: tuple[tuple[str, str], ...]
) -> list[Row]:
    home = Path(tempfile.mkdtemp(prefix="orchard-bench-capacity-"))
    fleet = Fleet(home / "logs")
    rows = []
    try:
        print(f"{build.name}: {count} sim agents, {streams} streams x {max_tokens} tokens; logs in {home}", flush=True)
        addresses = _agents(fleet, home, count, streams, options, build)
        routers = _routers(fleet, home, addresses, build)
        agents = [c.pid for c in fleet.children if c.name.startswith("agent")]
        for router in routers:  # warm: connections, the engines' first requests
            measure(router, agents, count, min(streams, 4 * count), 4, seed=-1)
        idle = idle_cores(routers, IDLE_S)
        per_request = {r.name: request_us(r, agents, count, streams, idle[r.name]) for r in routers}
        for seed, router in enumerate(routers):
            row = measure(router, agents, count, streams, max_tokens, seed)
            rows.append(replace(row, idle_cores=idle[router.name], request_us=per_request[router.name]))
            print("  " + line(rows[-1]), flush=True)
    finally:
        fleet.stop()
    return rows


HEADER = (
    f"{'router':<18}{'N':>4}{'streams':>8}{'tokens':>8}{'tok/s':>8}{'router µs/tok':>15}{'(loop)':>8}"
    f"{'router cores':>14}"
    f"{'rest cores':>12}{'+first p50/p99 ms':>19}{'+later p50/p99 ms':>19}{'errors':>8}"
    f"{'idle cores':>12}{'µs/request':>12}{'net µs/tok':>12}{'tok/write':>10}"
)


def line(row: Row) -> str:
    return (
        f"{row.router:<18}{row.workers:>4}{row.streams:>8}{row.tokens:>8}{row.tokens_per_s:>8.0f}"
        f"{row.us_per_token:>15.1f}{row.loop_us_per_token:>8.1f}{row.router_cpu_s / row.wall_s:>14.2f}"
        f"{row.rest_cpu_s / row.wall_s:>12.2f}"
        f"{pct(row.first_ms, 0.5):>10.1f}/{pct(row.first_ms, 0.99):<8.1f}"
        f"{pct(row.later_ms, 0.5):>10.2f}/{pct(row.later_ms, 0.99):<8.2f}{row.errors:>8}"
        f"{row.idle_cores:>12.3f}{row.request_us:>12.0f}{row.net_us_per_token:>12.1f}"
        f"{row.tokens / row.writes if row.writes else float('nan'):>10.2f}"
    )


def report(rows: list[Row]) -> str:
    lines = [HEADER, *(line(r) for r in rows)]
    by = {(r.router, r.workers): r for r in rows}
    for (name, count), row in by.items():
        if name.startswith("now") and (old := by.get((name.replace("now", "before"), count))):
            lines.append(
                f"N={count} {name.split(', ')[1]}: router µs/token {old.us_per_token:.1f} -> {row.us_per_token:.1f} "
                f"({old.us_per_token / row.us_per_token:.2f}x less)"
            )
    return "\n".join(lines)
