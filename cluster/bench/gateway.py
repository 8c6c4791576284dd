"""What the team gateway costs: the same streaming load through a router with keys, limits and usage rows and
through one without (open: no key database), alternating rounds in one run, on one sim agent.

    python -m cluster.bench gateway [--concurrency 32 --max-tokens 64 --rounds 3]
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from cluster.bench.overhead import RoundResult, print_table, run_round
from cluster.bringup.fleet import Fleet
from cluster.gateway import keys, store
from worker.shared.launch import AgentConfig, RouterConfig
from worker.shared.procs import free_port

MODEL = "sim-model"
# Short prefills, so that time to first token shows what the path adds rather than the engine's queue.
FAST = (("decode-ms-per-token", "5"), ("overhead-ms", "1"), ("prefill-ms-per-token", "0.01"))


def run(concurrency: int, max_tokens: int, rounds: int, sim_options: tuple[tuple[str, str], ...]) -> None:
    home = Path(tempfile.mkdtemp(prefix="orchard-bench-gateway-"))
    with store.opened(store.db_path(home)) as conn:
        # Limits that never bind but are checked on every request: rpm, tpm and a monthly quota.
        limits = keys.Limits(rpm=1_000_000, tpm=1_000_000_000, monthly_tokens=10**12)
        keys.set_team(conn, "bench", {"rpm": 1_000_000, "tpm": 1_000_000_000})
        _, secret = keys.create_key(conn, "bench", limits, admin=False, expires=None)
    options = (("max-concurrency", "256"), *sim_options)
    agent = AgentConfig(
        listen=f"127.0.0.1:{free_port()}",
        engine="sim",
        model=MODEL,
        max_concurrency=256,
        log_dir=str(home / "logs"),
        sim_options=options,
    )
    gated = RouterConfig(
        listen=f"127.0.0.1:{free_port()}", workers=(agent.listen,), gateway_db=str(store.db_path(home))
    )
    open_ = RouterConfig(listen=f"127.0.0.1:{free_port()}", workers=(agent.listen,))
    fleet = Fleet(home / "logs")
    try:
        fleet.start_agent(agent)
        fleet.start_router(gated, name="router-gated")
        fleet.start_router(open_, name="router-open")
        fleet.wait_ready(open_.local_url, 1, 60)
        fleet.wait_ready(gated.local_url, 1, 60, headers=keys.operator_headers(home))
        print(f"one sim agent, {concurrency} concurrent streams x {max_tokens} tokens; logs in {home / 'logs'}")
        print_table(
            asyncio.run(_rounds(open_.local_url, gated.local_url, secret, concurrency, max_tokens, rounds)),
            base="open",
            other="gated",
            what="the gateway",
        )
    finally:
        fleet.stop()


async def _rounds(
    open_url: str, gated_url: str, secret: str, concurrency: int, max_tokens: int, rounds: int
) -> list[RoundResult]:
    auth = {"authorization": f"Bearer {secret}"}
    await run_round("warmup", open_url, MODEL, concurrency, max_tokens, seed=-1)
    await run_round("warmup", gated_url, MODEL, concurrency, max_tokens, seed=-2, headers=auth)
    results = []
    for i in range(rounds):
        results.append(await run_round("open", open_url, MODEL, concurrency, max_tokens, seed=2 * i))
        results.append(await run_round("gated", gated_url, MODEL, concurrency, max_tokens, 2 * i + 1, headers=auth))
    return results
