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
import secrets
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
from filelock import FileLock, Timeout

from worker.store import pull
from worker.store.folder import ModelFolder, free_bytes
from worker.store.manifest import ModelFile
from worker.store.messages import SyncEvent, SyncOrder, SyncSources
from worker.store.serve import FileServer

PROGRESS_S = 0.5
Say = Callable[[SyncEvent], None]


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


class Host:
    def __init__(self, order: SyncOrder) -> None:
        self.order = order
        self.folder = ModelFolder.of(Path(order.root).expanduser(), order.manifest.source, order.manifest.revision)
        self.wanted = [f for f in order.manifest.files if f.path in set(order.wanted)]
        self.done = 0

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
        async with httpx.AsyncClient(timeout=httpx.Timeout(pull.READ_S, connect=pull.CONNECT_S)) as client:
            for file in files:
                try:
                    got = await pull.pull(
                        client, self.folder, file, sources.sources.get(file.path, ()), self.order.token, self._grew
                    )
                except pull.CopyFailed as exc:
                    return SyncEvent(kind="failed", done=self.done, reason=str(exc))
                if got.recopied:
                    recopied.append(file.path)
        return SyncEvent(kind="done", done=self.done, recopied=tuple(recopied))

    def _grew(self, n: int) -> None:
        self.done += n


async def run(lines: asyncio.Queue[str | None], say: Say) -> None:
    first = await lines.get()
    if first is None:
        return
    host = Host(SyncOrder.model_validate_json(first))
    host.folder.meta.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(str(host.folder.meta / "lock"), timeout=0)
        lock.acquire()
    except Timeout:
        say(SyncEvent(kind="failed", reason=f"another copy of this model is under way into {host.folder.path}"))
        return
    with lock:
        host.folder.write_manifest(host.order.manifest)
        ready = host.check()
        server = FileServer(host.folder, host.order.manifest, host.order.token or secrets.token_urlsafe(16))
        port = server.start(host.order.bind) if host.order.bind else 0
        try:
            say(ready.model_copy(update={"port": port}))
            if await _serve_copy(host, ready, lines, say):
                while await lines.get() is not None:  # serve peers until the head ends the input
                    pass
        finally:
            server.stop()
        say(SyncEvent(kind="closed", served=server.served))


async def _serve_copy(host: Host, ready: SyncEvent, lines: asyncio.Queue[str | None], say: Say) -> bool:
    """Copy what the head's sources say; False when the head went away meanwhile."""
    if ready.need_bytes > ready.free_bytes:
        short = ready.need_bytes - ready.free_bytes
        say(
            SyncEvent(
                kind="failed",
                reason=(
                    f"needs {gb(ready.need_bytes)} more free disk at {host.folder.path.parent.parent}: "
                    f"{gb(ready.free_bytes)} free, {gb(short)} short"
                ),
            )
        )
        return True
    line = await lines.get()
    if line is None:
        return False
    copy = asyncio.ensure_future(host.copy(host.missing(ready), SyncSources.model_validate_json(line)))
    ended = asyncio.ensure_future(lines.get())  # the head gone: stop where we are (the next run resumes)
    total, told = ready.need_bytes, -1
    while not copy.done():
        await asyncio.wait({copy, ended}, timeout=PROGRESS_S, return_when=asyncio.FIRST_COMPLETED)
        if ended.done() and ended.result() is None:
            copy.cancel()
            return False
        if host.done != told:
            told = host.done
            say(SyncEvent(kind="progress", done=host.done, total=total))
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
