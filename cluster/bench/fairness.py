"""Fair sharing under load: two teams on one saturated sim fleet, through the gateway's admission queue.

    python -m cluster.bench fairness [--workers 2 --slots 4 --rate-b 2 --seconds 20 --seed 0]

Scenarios, each on the same fleet and router (seeded Poisson arrivals, streaming chat requests):
- `B alone`: team B at --rate-b; its time to first token is the reference.
- `A 10x + B`: team A at 10x B's rate (far beyond the fleet) and B as before, equal weights. B's p90 TTFT is
  compared with B alone; A's output tokens/s with what the fleet gives A alone minus what B used.
- `A alone`: team A at 10x, for the capacity the fleet has.
- `weights 2:1`: both teams backlogged (closed loops, more than the fleet holds), A weighted 2, B 1; the tokens
  each team was served while both were backlogged.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cluster.bench.client import pct, sse_chunks
from cluster.bringup.fleet import Fleet
from cluster.gateway import keys, store
from worker.shared.launch import AgentConfig, RouterConfig
from worker.shared.procs import free_port

MODEL = "sim-model"


@dataclass(frozen=True)
class FairnessConfig:
    workers: int = 2
    slots: int = 4  # each agent's --max-concurrency: the fleet holds workers x slots requests
    rate_b: float = 2.0  # team B's requests per second; A sends 10x
    seconds: float = 20.0
    max_tokens: int = 16
    seed: int = 0
    sim_options: tuple[tuple[str, str], ...] = (
        ("decode-ms-per-token", "20"),
        ("overhead-ms", "4"),
        ("prefill-ms-per-token", "0.05"),
        ("batch-slowdown", "0"),
    )


@dataclass
class TeamRun:
    team: str
    ttfts: list[float] = field(default_factory=list)  # seconds
    stamps: list[float] = field(default_factory=list)  # arrival of every content chunk
    refused: int = 0
    errors: int = 0

    def tokens_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.stamps if start <= t < end)


@dataclass(frozen=True)
class Row:
    scenario: str
    team: str
    requests: int
    refused: int
    ttft_p50_ms: float
    ttft_p90_ms: float
    tokens_per_s: float


async def _one(client: httpx.AsyncClient, url: str, key: str, run: TeamRun, max_tokens: int, n: int) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"{run.team} request {n}"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    started = time.perf_counter()
    first = True
    try:
        async for arrival in sse_chunks(client, url, "/v1/chat/completions", body, {"authorization": f"Bearer {key}"}):
            if arrival.has_text:
                run.stamps.append(arrival.at)
                if first:
                    run.ttfts.append(arrival.at - started)
                    first = False
    except RuntimeError as exc:
        if " 429:" in str(exc):
            run.refused += 1
        else:
            run.errors += 1


async def _open_loop(
    url: str, key: str, run: TeamRun, rate: float, seconds: float, cfg: FairnessConfig, seed: int
) -> None:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        tasks, end, n = [], time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            tasks.append(asyncio.create_task(_one(client, url, key, run, cfg.max_tokens, n)))
            n += 1
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)


async def _closed_loop(url: str, key: str, run: TeamRun, loops: int, seconds: float, cfg: FairnessConfig) -> None:
    end = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:

        async def loop(index: int) -> None:
            n = 0
            while time.perf_counter() < end:
                await _one(client, url, key, run, cfg.max_tokens, index * 100_000 + n)
                n += 1

        await asyncio.gather(*(loop(i) for i in range(loops)))


def _row(scenario: str, run: TeamRun, seconds: float, start: float) -> Row:
    return Row(
        scenario,
        run.team,
        len(run.ttfts) + run.refused + run.errors,
        run.refused,
        pct(run.ttfts, 0.5) * 1000,
        pct(run.ttfts, 0.9) * 1000,
        run.tokens_between(start, start + seconds) / seconds,
    )


async def scenarios(url: str, secret: dict[str, str], cfg: FairnessConfig) -> list[Row]:
    rows: list[Row] = []
    rate_a, seconds = cfg.rate_b * 10, cfg.seconds
    b_alone, start = TeamRun("B"), time.perf_counter()
    await _open_loop(url, secret["B"], b_alone, cfg.rate_b, seconds, cfg, cfg.seed)
    rows.append(_row("B alone", b_alone, seconds, start))
    a_alone, start = TeamRun("A"), time.perf_counter()
    await _open_loop(url, secret["A"], a_alone, rate_a, seconds, cfg, cfg.seed + 1)
    rows.append(_row("A alone (10x)", a_alone, seconds, start))
    a_mixed, b_mixed, start = TeamRun("A"), TeamRun("B"), time.perf_counter()
    await asyncio.gather(
        _open_loop(url, secret["A"], a_mixed, rate_a, seconds, cfg, cfg.seed + 1),
        _open_loop(url, secret["B"], b_mixed, cfg.rate_b, seconds, cfg, cfg.seed),
    )
    rows += [_row("A 10x + B", a_mixed, seconds, start), _row("A 10x + B", b_mixed, seconds, start)]
    return rows


async def weighted(url: str, secret: dict[str, str], cfg: FairnessConfig) -> list[Row]:
    loops = cfg.workers * cfg.slots  # each team alone could fill the fleet
    a, b, start = TeamRun("A"), TeamRun("B"), time.perf_counter()
    await asyncio.gather(
        _closed_loop(url, secret["A"], a, loops, cfg.seconds, cfg),
        _closed_loop(url, secret["B"], b, loops, cfg.seconds, cfg),
    )
    warm = min(2.0, cfg.seconds / 4)  # both backlogged from here to the end
    window = cfg.seconds - warm
    return [_row("weights 2:1", a, window, start + warm), _row("weights 2:1", b, window, start + warm)]


def run(cfg: FairnessConfig) -> list[Row]:
    home = Path(tempfile.mkdtemp(prefix="orchard-bench-fairness-"))
    with store.opened(store.db_path(home)) as conn:
        secret = {team: keys.create_key(conn, team, keys.Limits(), admin=False, expires=None)[1] for team in "AB"}
    fleet = Fleet(home / "logs")
    agents = [
        AgentConfig(
            listen=f"127.0.0.1:{free_port()}",
            engine="sim",
            model=MODEL,
            worker_id=f"w{i}",
            max_concurrency=cfg.slots,
            log_dir=str(home / "logs" / f"w{i}"),
            sim_options=(*cfg.sim_options, ("max-concurrency", str(cfg.slots * 4))),
        )
        for i in range(cfg.workers)
    ]
    router = RouterConfig(
        listen=f"127.0.0.1:{free_port()}",
        workers=tuple(a.listen for a in agents),
        gateway_db=str(store.db_path(home)),
        max_queue=4096,
    )
    try:
        for agent in agents:
            fleet.start_agent(agent, name=f"agent-{agent.worker_id}")
        fleet.start_router(router)
        fleet.wait_ready(router.local_url, cfg.workers, 60, headers=keys.operator_headers(home))
        print(
            f"{cfg.workers} sim workers x {cfg.slots} slots; B at {cfg.rate_b}/s, A at {cfg.rate_b * 10}/s; "
            f"{cfg.seconds:.0f} s per scenario (logs in {home / 'logs'})",
            flush=True,
        )
        rows = asyncio.run(scenarios(router.local_url, secret, cfg))
        with store.opened(store.db_path(home)) as conn:
            keys.set_team(conn, "A", {"weight": 2.0})
        time.sleep(1.0)  # the router reads the new weight within 0.5 s
        rows += asyncio.run(weighted(router.local_url, secret, cfg))
    finally:
        fleet.stop()
    return rows


def report(rows: list[Row]) -> str:
    lines = [f"{'scenario':<16}{'team':<6}{'requests':>9}{'429':>6}{'TTFT p50 ms':>13}{'p90 ms':>9}{'tok/s':>9}"]
    lines += [
        f"{r.scenario:<16}{r.team:<6}{r.requests:>9}{r.refused:>6}{r.ttft_p50_ms:>13.1f}{r.ttft_p90_ms:>9.1f}"
        f"{r.tokens_per_s:>9.1f}"
        for r in rows
    ]
    get = {(r.scenario, r.team): r for r in rows}
    b_alone, b_mixed = get[("B alone", "B")], get[("A 10x + B", "B")]
    a_alone, a_mixed = get[("A alone (10x)", "A")], get[("A 10x + B", "A")]
    heavy, light = get[("weights 2:1", "A")], get[("weights 2:1", "B")]
    lines.append(f"B's p90 TTFT with A's 10x load / alone: {b_mixed.ttft_p90_ms / b_alone.ttft_p90_ms:.2f}x")
    left = a_alone.tokens_per_s - b_mixed.tokens_per_s
    lines.append(f"A's tok/s beside B / (A alone - B's): {a_mixed.tokens_per_s / left:.2f}")
    lines.append(f"served tokens A:B at weights 2:1: {heavy.tokens_per_s / max(light.tokens_per_s, 1e-9):.2f}:1")
    return "\n".join(lines)
