"""`cluster status`: the workers as the router sees them — once as a table, as JSON (`--json`), or live
(`--watch`, redrawn every second until Ctrl-C)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from cluster.router.rows import OnDemandRow, WorkerRow, WorkersReply

COLUMNS = (
    "worker",
    "host / address",
    "chip / OS",
    "memory",
    "engine",
    "models",
    "state",
    "breaker",
    "in flight",
    "tok/s",
    "TTFT p50",
)


def table(rows: list[WorkerRow], url: str, at: float | None = None) -> Table:
    """The workers as a table (`at`: when it was read, for the live view's title)."""
    title = f"Orchard at {url}" + (f" · {time.strftime('%H:%M:%S', time.localtime(at))}" if at else "")
    out = Table(title=title)
    for column in COLUMNS:
        out.add_column(column, justify="right" if column in ("in flight", "tok/s", "TTFT p50") else "left")
    for row in rows:
        memory = f"{row.memory_bytes / 2**30:.0f} GiB" if row.memory_bytes else "?"
        if row.memory_bytes and row.memory_available_bytes:
            memory = f"{(row.memory_bytes - row.memory_available_bytes) / 2**30:.0f} of {memory} used"
        engine = row.engine
        if group := row.group:
            engine += f" ({group.name}: {group.mode} over {group.size} hosts)"
        where = f"{row.host} / {row.address}" if row.host else row.address
        ttft = "-" if row.ttft_p50_s is None else f"{row.ttft_p50_s * 1000:.0f} ms"
        out.add_row(
            row.worker_id,
            where,
            f"{row.chip} / {row.os}",
            memory,
            engine,
            _models(row),
            row.state_text,
            row.breaker,
            str(row.inflight),
            f"{row.tokens_per_s:.1f}",
            ttft,
        )
    return out


def _models(row: WorkerRow) -> str:
    """Each model with its context and capabilities, as its engine reported them."""
    facts = {f.name: f.describe() for f in row.model_facts}
    return ", ".join(f"{name} ({facts[name]})" if facts.get(name) else name for name in row.models)


def on_demand_table(rows: list[OnDemandRow]) -> Table:
    """The on-demand models: loaded (where), loading, or unloaded, with their last use."""
    out = Table(title="on-demand models")
    for column in ("model", "host", "state", "in flight", "waiting", "idle", "memory"):
        out.add_column(column, justify="right" if column in ("in flight", "waiting", "idle", "memory") else "left")
    for row in rows:
        idle = "never used" if row.idle_s is None else f"{row.idle_s:.0f} s"
        out.add_row(
            row.model, row.host or "-", row.state, str(row.inflight), str(row.waiting), idle, f"{row.need_gb:.1f} GB"
        )
    return out


def view(reply: WorkersReply, url: str, at: float | None = None) -> RenderableType:
    """The workers' table, and the on-demand models' when the lab offers any."""
    workers = table(reply.workers, url, at)
    return Group(workers, on_demand_table(reply.on_demand)) if reply.on_demand else workers


def as_json(reply: WorkersReply | list[WorkerRow]) -> str:
    reply = reply if isinstance(reply, WorkersReply) else WorkersReply(workers=reply)
    return reply.model_dump_json(indent=2)


def watch(console: Console, read: Callable[[], WorkersReply], url: str, every_s: float = 1.0) -> None:
    """Redraw the table every `every_s` until interrupted (into a pipe or a log: print it anew each time); a
    failed read is said in its place, and it tries again (the router may be restarting)."""
    with Live(console=console, auto_refresh=False) if console.is_terminal else contextlib.nullcontext() as live:
        while True:
            shown = _read(read, url)
            if live is not None:
                live.update(shown, refresh=True)
            else:
                console.print(shown)
                console.file.flush()  # a pipe would hold it back
            time.sleep(every_s)


def _read(read: Callable[[], WorkersReply], url: str) -> RenderableType:
    try:
        return view(read(), url, time.time())
    except Exception as exc:  # any failure to read is shown, and the next second tries again
        return f"[red]the router at {url} did not answer:[/] {escape(str(exc).splitlines()[0])}"
