"""A model revision put on hosts over the lab network (`cluster up`, `cluster models push`).

The head serves its store's copy over HTTP, bound to the address the hosts reach it at, for one push, to
holders of a token made for it; on each host `python -m worker.store.sync` (over the SSH connection the
bring-up already holds) says what it has, pulls what it lacks from the sources fanout.py names, verifies each
file, and serves peers. Nothing here counts against an engine's ready deadline: engines start after their copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster.bringup.remote import python_of, shell_path
from cluster.placement.hostsfile import HostSpec
from cluster.store import fanout
from cluster.store.catalog import Entry
from worker.shared.store.messages import SyncEvent, SyncOrder, SyncSources, gb
from worker.shared.store.serve import FileServer

Report = Callable[[str], None]
HEAD = "head"  # the plan's name for the head's URL, which each host knows by its own route
READY_S = 1800.0  # a host hashing a 140 GB model it already holds, on a slow disk
REPORT_S = 2.0
CLOSE_S = 10.0


@dataclass(frozen=True)
class Target:
    host: HostSpec
    conn: Any  # asyncssh.SSHClientConnection, open
    wanted: tuple[str, ...]


@dataclass
class Copied:
    """One host's part: the model's folder there (for its engine), or why not."""

    label: str
    folder: str = ""
    reason: str = ""
    kept: int = 0  # files already there, verified
    copied: int = 0  # bytes copied in this run
    resumed: int = 0  # bytes of an interrupted copy kept
    served: int = 0  # bytes this host sent to peers
    recopied: tuple[str, ...] = ()


@dataclass
class Pushed:
    hosts: dict[str, Copied] = field(default_factory=dict)
    head_sent: int = 0
    seconds: float = 0.0


async def push(entry: Entry, targets: list[Target], report: Report, chain: bool = True) -> Pushed:
    started = time.monotonic()
    if changed := await asyncio.to_thread(_changed, entry):  # never send what would fail every host's check
        why = f"the store's copy of {changed} changed since it was checked: pull or import the model again"
        return Pushed({t.host.label: Copied(t.host.label, reason=why) for t in targets})
    token = secrets.token_urlsafe(24)
    routes = {t.host.label: t.conn.get_extra_info("sockname")[0] for t in targets}
    bind = next(iter(set(routes.values()))) if len(set(routes.values())) == 1 else "::"
    server = FileServer(entry.folder, entry.manifest, token)
    port = server.start(bind)
    heads = {label: _url(address, port) for label, address in routes.items()}
    hosts = [_HostCopy(t, entry, token, report) for t in targets]
    try:
        await asyncio.gather(*(h.start() for h in hosts))
        plan = fanout.sources(HEAD, [h.holder() for h in hosts], [f.path for f in entry.manifest.files], chain)
        await asyncio.gather(*(h.copy(plan[h.label], heads[h.label]) for h in hosts))
        await asyncio.gather(*(h.close() for h in hosts))
    finally:
        for h in hosts:
            h.abandon()
        server.stop()
    return Pushed({h.label: h.result for h in hosts}, server.served, time.monotonic() - started)


def _changed(entry: Entry) -> str | None:
    """The first file of the head's copy that is no longer the one checked in (hashed only if it was written)."""
    return next((f.path for f in entry.manifest.files if not entry.folder.verified(f)), None)


def _url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


class _HostCopy:
    def __init__(self, target: Target, entry: Entry, token: str, report: Report) -> None:
        self.target, self.entry, self.token, self.report = target, entry, token, report
        self.label = target.host.label
        self.result = Copied(self.label)
        self.ready: SyncEvent | None = None
        self.process: Any = None

    async def start(self) -> None:
        host, conn = self.target.host, self.target.conn
        try:
            self.process = await conn.create_process(f"{shell_path(python_of(host))} -m worker.store.sync")
            order = SyncOrder(
                root=f"{host.orchard_dir.rstrip('/')}/models",
                manifest=self.entry.manifest,
                wanted=self.target.wanted,
                bind=conn.get_extra_info("peername")[0],
                token=self.token,
            )
            self.process.stdin.write(order.model_dump_json() + "\n")
            event = await asyncio.wait_for(self._event(), READY_S)
        except Exception as exc:  # SSH refused a session, the host went away, …: this host fails, the others go on
            event, self.result.reason = None, f"could not start: {exc or type(exc).__name__}"
        if event is None or event.kind != "ready":
            self.result.reason = self.result.reason or (event.reason if event else await self._exited())
            self.report(f"{self.label}: copying {self.entry.manifest.source} failed: {self.result.reason}")
            return
        self.ready = event
        self.result.folder, self.result.kept, self.result.resumed = event.folder, len(event.have), event.partial_bytes
        if event.need_bytes > event.free_bytes:
            self.result.reason = await self._refusal()
            self.report(f"{self.label}: copying {self.entry.manifest.source} refused: {self.result.reason}")

    def holder(self) -> fanout.Holder:
        ready = self.ready
        if ready is None:
            return fanout.Holder(self.label, "", frozenset(), ())
        address = self.target.conn.get_extra_info("peername")[0]
        reachable = ready.port and not ipaddress.ip_address(address.split("%")[0]).is_loopback  # not by peers
        url = _url(address, ready.port) if reachable else ""
        needs = () if self.result.reason else tuple(p for p in self.target.wanted if p not in ready.have)
        return fanout.Holder(self.label, url, frozenset(ready.have), needs)

    async def copy(self, plan: dict[str, tuple[str, ...]], head_url: str) -> None:
        if self.ready is None or self.result.reason:
            return
        try:
            await self._copy(plan, head_url)
        except Exception as exc:  # the host went away mid-copy: its row says so, the others go on
            self.result.reason = f"the copy ended: {exc or type(exc).__name__}"
            self.report(f"{self.label}: copying {self.entry.manifest.source} failed: {self.result.reason}")

    async def _copy(self, plan: dict[str, tuple[str, ...]], head_url: str) -> None:
        assert self.ready is not None
        sources = {path: tuple(head_url if url == HEAD else url for url in urls) for path, urls in plan.items()}
        self.process.stdin.write(SyncSources(sources=sources).model_dump_json() + "\n")
        name, total, last = self.entry.manifest.source, self.ready.need_bytes, 0.0
        began = time.monotonic()
        if not total:
            self.report(f"{self.label}: {name} already here ({len(self.ready.have)} files verified)")
        while (event := await self._event()) is not None and event.kind == "progress":
            self.result.copied = event.done
            if total and time.monotonic() - last >= REPORT_S:
                last = time.monotonic()
                rate = event.done / max(last - began, 1e-3) / 1e6
                self.report(
                    f"{self.label}: copying {name}: {gb(event.done)} of {gb(total)} "
                    f"({100 * event.done / max(total, 1):.0f}%), {rate:.0f} MB/s"
                )
        if event is None or event.kind == "failed":
            self.result.reason = event.reason if event else await self._exited()
            self.report(f"{self.label}: copying {name} failed: {self.result.reason}")
            return
        self.result.copied, self.result.recopied = event.done, event.recopied
        if total:
            resumed = f", resumed after {gb(self.result.resumed)}" if self.result.resumed else ""
            self.report(f"{self.label}: {name} copied ({gb(event.done)} in {time.monotonic() - began:.1f} s{resumed})")

    async def close(self) -> None:
        """The lab is done: the host stops serving peers and says how much it sent."""
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            self.process.stdin.write_eof()
        with contextlib.suppress(Exception):  # a host gone by now has nothing more to say
            while (event := await asyncio.wait_for(self._event(), CLOSE_S)) is not None:
                if event.kind == "closed":
                    self.result.served = event.served

    def abandon(self) -> None:
        if self.process is not None:
            self.process.close()

    async def _event(self) -> SyncEvent | None:
        """The host's next event; None when its output ended. A line that is none (a login script's greeting) is
        passed over."""
        while line := await self.process.stdout.readline():
            with contextlib.suppress(ValueError):
                return SyncEvent.model_validate_json(line)
        return None

    async def _refusal(self) -> str:
        event = await self._event()
        return event.reason if event is not None and event.kind == "failed" else "not enough free disk"

    async def _exited(self) -> str:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.wait_closed(), CLOSE_S)
        errors = str(await self.process.stderr.read() if self.process else "").strip().splitlines()
        return "model copy ended: " + (errors[-1] if errors else "no reason given")
