"""An agent's on-demand engines (issue 30): each is an agent of its own — a child of this one, started by the
router's Load and stopped by its Unload — so it has its own port, samples, breaker and drain, and one engine's
crash takes no other down. Children run through the tether: they die with this agent, on macOS too.

Memory: this agent holds its own engine's need (`--need-gb`) and each child's (the router's LoadRequest); a Load
whose sum would pass the host's usable memory (Metal's working set on a Mac) is refused. The router plans by the
same figures (cluster/placement/demand.py); this is the host's own check, the last word.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from worker.shared import procs
from worker.shared.launch import AgentConfig, LaunchConfigError

MAX_CHILDREN = 16
LISTEN_S = 60.0  # a child agent listens within this (it imports, then binds; its engine starts after)


class LoadRefused(Exception):
    """The host cannot take the engine; the message says why."""


@dataclass
class Child:
    model: str
    need_bytes: int
    process: subprocess.Popen[bytes]
    port: int


class Children:
    def __init__(
        self, host: str, folder: Path, usable_bytes: int, own_need_bytes: int, parent: AgentConfig | None = None
    ) -> None:
        """`host`: the address part this agent listens on (children listen there too); `folder`: their logs and
        port files; `parent`: this agent's configuration, whose interpreter, TLS folder and log folder a child's
        must keep (a Load names a model, never another program)."""
        self.host, self.folder, self.parent = host, folder, parent
        self.usable_bytes, self.own_need_bytes = usable_bytes, own_need_bytes
        self.running: dict[str, Child] = {}
        self._lock = asyncio.Lock()

    def held_bytes(self) -> int:
        return self.own_need_bytes + sum(c.need_bytes for c in self.running.values())

    async def load(self, model: str, argv: list[str], need_bytes: int) -> int:
        """The child's port, started now or already running."""
        async with self._lock:
            child = self.running.get(model)
            if child is not None and child.process.poll() is None:
                return child.port
            self.running.pop(model, None)
            self._check(model, need_bytes)
            self._allowed(argv)
            child = await self._start(model, argv, need_bytes)
            self.running[model] = child
            return child.port

    def _check(self, model: str, need_bytes: int) -> None:
        if len(self.running) >= MAX_CHILDREN:
            raise LoadRefused(f"this agent runs {MAX_CHILDREN} on-demand engines already")
        if self.usable_bytes and self.held_bytes() + need_bytes > self.usable_bytes:
            held, usable = self.held_bytes() / 1e9, self.usable_bytes / 1e9
            raise LoadRefused(
                f"{model} needs {need_bytes / 1e9:.1f} GB; this host's engines hold {held:.1f} of {usable:.1f} GB"
            )

    def _allowed(self, argv: list[str]) -> None:
        """A child's arguments are an agent's, and run what this agent would: its engine interpreter, its TLS
        identity, logs under its own."""
        try:
            child = AgentConfig.from_argv(argv)
        except LaunchConfigError as exc:
            raise LoadRefused(f"not an agent's arguments: {exc}") from None
        if self.parent is None:
            return
        logs = Path(child.log_dir).expanduser().resolve()
        if child.engine_python != self.parent.engine_python or child.tls_dir != self.parent.tls_dir:
            raise LoadRefused("a child agent runs with this agent's engine interpreter and TLS identity")
        if not logs.is_relative_to(self.parent.log_path.resolve()):
            raise LoadRefused("a child agent logs under this agent's log folder")

    async def _start(self, model: str, argv: list[str], need_bytes: int) -> Child:
        name = "".join(c if c.isalnum() or c in "-._" else "_" for c in model)
        port_file = self.folder / f"{name}.port"
        port_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "worker.agent",
            *argv,
            "--listen",
            f"{self.host}:0",
            "--port-file",
            str(port_file),
        ]
        with procs.open_log(self.folder / f"{name}.log") as log:
            process = procs.start(command, log)
        deadline = asyncio.get_running_loop().time() + LISTEN_S
        try:
            while asyncio.get_running_loop().time() < deadline and process.poll() is None:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    return Child(model, need_bytes, process, int(port_file.read_text()))
                await asyncio.sleep(0.05)
        except BaseException:  # the Load was cancelled (its deadline, the router gone): no child is left behind
            await asyncio.shield(_end(process, grace_s=5.0))
            raise
        await _end(process)
        tail = (self.folder / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
        status = (
            f"exit status {process.returncode}" if process.returncode is not None else f"not within {LISTEN_S:.0f} s"
        )
        raise LoadRefused(f"the agent for {model} did not listen ({status}): {' / '.join(tail) or 'no output'}")

    async def unload(self, model: str) -> bool:
        """Stop the model's child; its memory counts as held until it has exited."""
        child = self.running.get(model)
        if child is None:
            return False
        await _end(child.process)
        if self.running.get(model) is child:
            del self.running[model]
        return True

    async def stop(self) -> None:
        await asyncio.gather(*(self.unload(model) for model in list(self.running)))


async def _end(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM the child's group (the agent drains and stops its engine), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(procs.exited(process, poll_s=0.05), wait)
            return
