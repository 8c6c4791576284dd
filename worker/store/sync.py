"""`python -m worker.store.sync`: bring this host's copy of one model revision to what the head asks, over the
lab network, and serve it to peers meanwhile. Run by the head over SSH; JSON lines both ways (messages.py).

Steps: check what is here (a file whose size or hash is wrong goes; an interrupted copy stays, to resume) and
the free disk → say `ready` → pull each missing file from the sources the head names → `done` or `failed` →
serve peers until the head ends the input → `closed`. The head going away (input ends early) stops the copy
where it is; the next run resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
from filelock import FileLock, Timeout

from worker.shared.store.folder import ModelFolder, free_bytes
from worker.shared.store.manifest import ModelFile
from worker.shared.store.messages import SyncEvent, SyncOrder, SyncSources, gb
from worker.shared.store.serve import FileServer
from worker.store import pull

PROGRESS_S = 0.5
SERVE_IDLE_S = 1800.0
Say = Callable[[SyncEvent], None]


class Host:
    def __init__(self, order: SyncOrder) -> None:
        self.order = order
        self.folder = ModelFolder.of(Path(order.root).expanduser(), order.manifest.source, order.manifest.revision)
        self.wanted = [f for f in order.manifest.files if f.path in set(order.wanted)]
        self.done = 0
        self.pending: set[str] = set()  # files this host is still to copy (peers asking for them wait)

    def expecting(self, path: str) -> bool:
        return path in self.pending

    def check(self) -> SyncEvent:
        """What is here already: verified files kept, wrong ones removed, interrupted copies measured."""
        have, need, kept = [], 0, 0
        for file in self.wanted:
            if self.folder.verified(file):
                have.append(file.path)
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.folder.path / file.path).unlink()  # wrong size or content: copied again
            partial = self.folder.partial(file)
            size = partial.stat().st_size if partial.exists() else 0
            kept += size if size <= file.size else 0
            need += file.size - (size if size <= file.size else 0)
        return SyncEvent(
            kind="ready",
            folder=str(self.folder.path),
            have=tuple(have),
            need_bytes=need,
            partial_bytes=kept,
            free_bytes=free_bytes(self.folder.path),
        )

    def missing(self, ready: SyncEvent) -> list[ModelFile]:
        return [f for f in self.wanted if f.path not in ready.have]

    async def copy(self, files: list[ModelFile], sources: SyncSources) -> SyncEvent:
        recopied = []
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(pull.READ_S, connect=pull.CONNECT_S)) as client:
                for file in files:
                    try:
                        got = await pull.pull(
                            client, self.folder, file, sources.sources.get(file.path, ()), self.order.token, self._grew
                        )
                    except pull.CopyFailed as exc:
                        return SyncEvent(kind="failed", done=self.done, reason=str(exc))
                    self.pending.discard(file.path)
                    if got.recopied:
                        recopied.append(file.path)
        finally:
            self.pending = set()  # nothing more is coming: peers stop waiting for this host
        return SyncEvent(kind="done", done=self.done, recopied=tuple(recopied))

    def _grew(self, n: int) -> None:
        self.done += n


async def run(lines: asyncio.Queue[str | None], say: Say) -> None:
    first = await lines.get()
    if first is None:
        return
    host = Host(SyncOrder.model_validate_json(first))
    host.folder.meta.mkdir(parents=True, exist_ok=True)
    holder = host.folder.meta / "lock.pid"
    try:
        with FileLock(str(host.folder.meta / "lock"), timeout=0):
            holder.write_text(f"{os.getpid()}\n")
            await _locked(host, lines, say)
    except Timeout:
        other = holder.read_text().strip() if holder.exists() else "?"
        say(
            SyncEvent(
                kind="failed",
                reason=(
                    f"another copy into {host.folder.path} is under way (pid {other} on this host): "
                    "let it end, or stop it"
                ),
            )
        )


async def _locked(host: Host, lines: asyncio.Queue[str | None], say: Say) -> None:
    host.folder.write_manifest(host.order.manifest)
    ready = host.check()
    if ready.need_bytes <= ready.free_bytes:  # peers may ask for these before the head's sources arrive
        host.pending = {f.path for f in host.missing(ready)}
    token = host.order.token or secrets.token_urlsafe(16)
    server = FileServer(host.folder, host.order.manifest, token, expecting=host.expecting)
    port = server.start(host.order.bind) if host.order.bind else 0
    try:
        say(ready.model_copy(update={"port": port}))
        if await _serve_copy(host, ready, lines, say):
            await _serve_until_done(server, lines)
    finally:
        server.stop()
    say(SyncEvent(kind="closed", served=server.served))


async def _serve_until_done(server: FileServer, lines: asyncio.Queue[str | None]) -> None:
    """Serve peers until the head ends the input, or nobody has asked for a byte in SERVE_IDLE_S (a head that
    vanished without the input ending: a partitioned network keeps an SSH session open for hours)."""
    served, quiet = server.served, 0.0
    while quiet < SERVE_IDLE_S:
        try:
            if await asyncio.wait_for(lines.get(), PROGRESS_S) is None:
                return
        except TimeoutError:
            quiet = 0.0 if server.served != served else quiet + PROGRESS_S
            served = server.served


def _short_of_disk(host: Host, ready: SyncEvent) -> str:
    short = ready.need_bytes - ready.free_bytes
    purgeable = " (macOS counts no purgeable space as free)" if sys.platform == "darwin" else ""
    return (
        f"needs {gb(ready.need_bytes)} more free disk at {host.folder.path.parent.parent}: "
        f"{gb(ready.free_bytes)} free{purgeable}, {gb(short)} short"
    )


async def _serve_copy(host: Host, ready: SyncEvent, lines: asyncio.Queue[str | None], say: Say) -> bool:
    """Copy what the head's sources say; False when the head went away meanwhile."""
    if ready.need_bytes > ready.free_bytes:
        say(SyncEvent(kind="failed", reason=_short_of_disk(host, ready)))
        return True
    line = await lines.get()
    if line is None:
        return False
    copy = asyncio.ensure_future(host.copy(host.missing(ready), SyncSources.model_validate_json(line)))
    ended = asyncio.ensure_future(lines.get())  # the head gone: stop where we are (the next run resumes)
    total, told = ready.need_bytes, -1
    while not copy.done():
        await asyncio.wait({copy, ended}, timeout=PROGRESS_S, return_when=asyncio.FIRST_COMPLETED)
        if ended.done():
            if ended.result() is None:
                copy.cancel()
                return False
            ended = asyncio.ensure_future(lines.get())  # a stray line: keep listening for the end
        if host.done != told:
            told = host.done
            say(SyncEvent(kind="progress", done=min(host.done, total), total=total))
    ended.cancel()
    say(copy.result())
    return True


def main() -> None:
    def say(event: SyncEvent) -> None:
        sys.stdout.write(event.model_dump_json() + "\n")
        sys.stdout.flush()

    async def both() -> None:
        lines: asyncio.Queue[str | None] = asyncio.Queue()  # the head sends two lines, then ends its input
        loop = asyncio.get_running_loop()

        def read() -> None:  # a daemon thread: a read blocked at exit must not hold the process
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, None)

        threading.Thread(target=read, daemon=True).start()
        await run(lines, say)

    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        asyncio.run(both())


if __name__ == "__main__":
    main()
