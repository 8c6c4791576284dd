"""`python -m cluster.bench demand`: a sim lab offering more models than its memory holds, under a skewed (Zipf)
request mix, on demand against the same lab with the hottest models pinned by hand. Prints, for each: the share
of requests answered, the share that met a cold start and their mean added wait, and tokens/s.

Local processes on loopback: H agents of `--usable-gb` each; M models of `--model-gb`, so a host holds a few. On
demand, every agent is vacant and loads what is asked (evicting the least recently used); pinned, each host runs
the next hottest model and the others are not served. A sim engine loads in about a second; a real model's load
is that model's own (tens of seconds from a Mac's SSD for a 40 GB model), which multiplies the cold wait here.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from cluster.bringup.fleet import Fleet
from cluster.placement import offers
from cluster.placement.offers import DemandCatalog, HostRoom, Offered, Placeable
from worker.shared.launch import AgentConfig, RouterConfig
from worker.shared.procs import free_port

GB = 10**9


@dataclass(frozen=True)
class Mix:
    hosts: int = 4
    models: int = 20  # 6 GB each: 120 GB offered, 80 GB of memory (12 loaded at most)
    usable_gb: float = 20.0
    model_gb: float = 6.0
    requests: int = 400
    clients: int = 16
    tokens: int = 16
    zipf: float = 1.1
    decode_ms: float = 5.0
    seed: int = 0

    def draw(self) -> list[str]:
        weights = [1 / (rank + 1) ** self.zipf for rank in range(self.models)]
        rng = random.Random(self.seed)
        return rng.choices([f"m{rank:02d}" for rank in range(self.models)], weights, k=self.requests)


@dataclass
class Result:
    name: str
    answered: int
    cold: int
    cold_wait_s: float
    tokens: int
    seconds: float


def sim_child(logs: Path, model: str, host: str, decode_ms: float = 1.0, slots: int = 64) -> Placeable:
    """A sim on-demand model's child agent on a host, its command line built as `cluster up` builds one."""
    config = AgentConfig(
        engine="sim",
        model=model,
        served_name=model,
        worker_id=f"{host}:{model}",
        log_dir=str(logs / host / model),
        max_concurrency=slots,
        sim_options=(("decode-ms-per-token", str(decode_ms)),),
    )
    return Placeable(host=host, argv=tuple(config.to_argv()))


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def _drive(url: str, mix: Mix) -> tuple[int, int, float]:
    queue = list(mix.draw())
    answered = tokens = 0
    failures: dict[str, int] = {}
    began = time.monotonic()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal answered, tokens
        while queue:
            model = queue.pop()
            body = {"model": model, "prompt": "hello", "max_tokens": mix.tokens}
            try:
                reply = await http.post(url + "/v1/completions", json=body)
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                continue
            if reply.status_code != 200:
                code = f"{reply.status_code} {reply.json().get('error', {}).get('code', '')}"
                failures[code] = failures.get(code, 0) + 1
            if reply.status_code == 200:
                answered += 1
                tokens += reply.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(mix.clients)))
    if failures:
        print("failures:", failures)
    return answered, tokens, time.monotonic() - began


def _agents(root: Path, mix: Mix, on_demand: bool) -> dict[str, AgentConfig]:
    """One agent per host: vacant (on demand), or running the next hottest model (pinned by hand)."""
    agents = {}
    for index in range(mix.hosts):
        label, hot = f"h{index + 1}", f"m{index:02d}"
        own = (
            {"engine": "none"}
            if on_demand
            else {
                "engine": "sim",
                "model": hot,
                "served_name": hot,
                "sim_options": (("decode-ms-per-token", str(mix.decode_ms)),),
            }
        )
        agents[label] = AgentConfig(
            listen=f"127.0.0.1:{free_port()}", worker_id=label, log_dir=str(root / "logs" / label), **own
        )
    return agents


def _catalog(root: Path, mix: Mix, agents: dict[str, AgentConfig]) -> DemandCatalog:
    rooms = tuple(
        HostRoom(label=label, agent=a.listen, usable_bytes=int(mix.usable_gb * GB)) for label, a in agents.items()
    )
    models = tuple(
        Offered(
            name=f"m{rank:02d}",
            engine="sim",
            source="sim",
            need_bytes=int(mix.model_gb * GB),
            keep_alive_s=3600,
            places=tuple(sim_child(root / "logs", f"m{rank:02d}", label, mix.decode_ms) for label in agents),
        )
        for rank in range(mix.models)
    )
    return DemandCatalog(hosts=rooms, models=models)


def _lab(root: Path, mix: Mix, on_demand: bool) -> Result:
    fleet = Fleet(root / "logs")
    agents = _agents(root, mix, on_demand)
    router = RouterConfig(listen=f"127.0.0.1:{free_port()}", workers=tuple(a.listen for a in agents.values()))
    if on_demand:
        offers.write(root / "demand.json", _catalog(root, mix, agents))
        router = router.model_copy(update={"demand": str(root / "demand.json")})
    try:
        for label, agent in agents.items():
            fleet.start_agent(agent, name=f"agent-{label}")
        fleet.start_router(router)
        if on_demand:
            time.sleep(3)  # the vacant agents answer Info: nothing of their own to wait for
        else:
            fleet.wait_ready(router.local_url, mix.hosts, timeout_s=60)
        answered, tokens, seconds = asyncio.run(_drive(router.local_url, mix))
        text = httpx.get(router.local_url + "/metrics", timeout=10).text
    finally:
        fleet.stop()
    cold = int(_metric(text, "orchard_cold_start_wait_seconds_count"))
    waited = _metric(text, "orchard_cold_start_wait_seconds_sum")
    name = "on demand (every agent vacant)" if on_demand else f"{mix.hosts} hottest pinned by hand"
    return Result(name, answered, cold, waited / cold if cold else 0.0, tokens, seconds)


def run(mix: Mix, console: Console) -> None:
    with tempfile.TemporaryDirectory(prefix="orchard-demand-") as tmp:
        results = [_lab(Path(tmp) / "pinned", mix, False), _lab(Path(tmp) / "demand", mix, True)]
    per_host = int(mix.usable_gb // mix.model_gb)
    table = Table(
        title=(
            f"{mix.models} models of {mix.model_gb:.0f} GB, {mix.hosts} hosts of {mix.usable_gb:.0f} GB "
            f"({per_host} per host), {mix.requests} requests Zipf s={mix.zipf}, {mix.clients} clients"
        )
    )
    for column in ("lab", "answered", "met a cold start", "mean cold wait", "tokens/s"):
        table.add_column(column, justify="left" if column == "lab" else "right")
    for r in results:
        table.add_row(
            r.name,
            f"{r.answered / mix.requests:.0%}",
            f"{r.cold / mix.requests:.1%}",
            f"{r.cold_wait_s:.2f} s",
            f"{r.tokens / r.seconds:.0f}",
        )
    console.print(table)
