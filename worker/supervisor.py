"""Supervising one engine subprocess: an explicit state machine with deadlines and a terminal FAILED state.

STARTING --(health ok + one real token before the deadline)--> READY
READY --(process exits / health fails 3x / streams in flight, no token for stall_timeout_s)--> RESTARTING
      --(backoff)--> STARTING
STARTING --(too many failed starts in a row, or a launch plan the configuration rules out)--> FAILED
                                                          (terminal; the agent reports it)
READY/STARTING --request_restart()--> RESTARTING --(at once)--> STARTING   (a shard group relaunching)
any --stop()--> STOPPING --> STOPPED   (SIGTERM to the process group, SIGKILL after a grace period)

Before the first launch an optional fetch brings the model's files (a hub download, with progress in the detail
of STARTING; the ready deadline starts after it; a failed fetch is a failed start, retried with backoff, and
resumes). Before each launch an optional gate may hold the engine back (a shard-group rank waits for its peers).
A shard-group rank other than 0 serves no HTTP: it is ready once its process has stayed up for a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from worker.engines.base import EngineAdapter, EngineConfig, LaunchPlan
from worker.shared import procs
from worker.shared.download import FETCHING_DETAIL, Fetch
from worker.shared.enginemetrics import EngineLoad, parse_engine_metrics
from worker.shared.launch import STALL_TIMEOUT_S
from worker.shared.procs import free_port
from worker.shared.states import EngineState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorPolicy:
    ready_timeout_s: float = 600.0  # vLLM on 2 CPU cores needs a minute or two
    stall_timeout_s: float = STALL_TIMEOUT_S  # health answers, nothing advances (a collective waiting on a lost peer)
    health_interval_s: float = 2.0
    health_failures_to_restart: int = 3
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    max_failed_starts: int = 5
    stop_grace_s: float = 15.0
    hung_grace_s: float = 2.0  # an engine that failed its health checks or stalled will not finish its requests
    member_settle_s: float = 1.0  # a rank that serves no HTTP is ready after staying up this long
    gate_poll_s: float = 0.25


class EngineSupervisor:
    """start / request_restart / url / stats / stop for one engine subprocess, with restarts."""

    def __init__(
        self,
        adapter: EngineAdapter,
        config: EngineConfig,
        log_dir: Path,
        policy: SupervisorPolicy | None = None,
        port: int | None = None,
        gate: Callable[[], str | None] | None = None,
        platform: str = sys.platform,
        fetch: Fetch | None = None,
    ) -> None:
        self.adapter = adapter
        # The tether ends the engine with the agent: by the kernel on Linux, by a watching process elsewhere.
        self.watched = not platform.startswith("linux")
        self.pid_record = log_dir / "engine.pid"
        self.config = config
        self.policy = policy or SupervisorPolicy()
        self.log_path = log_dir / "engine.log"
        self._fixed_port = port
        self.port = 0
        self.state = EngineState.STOPPED
        self.detail = "not started"
        self.restarts = 0
        self.crashes = 0  # restarts nobody asked for
        self.gate = gate  # None = go; otherwise why the engine must wait before (re)launching
        self.fetch = fetch  # the model's files to bring first (None: nothing, or done)
        self._restart_reason: str | None = None
        self._restart_event = asyncio.Event()
        self.last_token_at = 0.0
        # Requests the stall watchdog can see progress on (set by the service): streams, and whole answers
        # where the engine counts its tokens.
        self.inflight: Callable[[], int] = lambda: 0
        self._counted: int | None = None  # the engine's prompt + generated token counter at the last tick
        self.health_failures = 0  # in a row, of the engine running now (told to the router: a stopped engine)
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0))
        self._serves_http = True
        self._misconfigured = False  # the adapter refused the configuration: no retry can succeed
        self.capabilities: tuple[str, ...] | None = None  # the last launch plan's (None: no plan yet, or unknown)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    async def start(self) -> None:
        """Launch the engine and keep it alive in the background until stop()."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="engine-supervisor")

    def request_restart(self, reason: str) -> None:
        """Stop the engine now and launch it again at once (not counted as a crash, no backoff)."""
        self._restart_reason = reason
        self._restart_event.set()

    async def stats(self) -> EngineLoad | None:
        path = self.adapter.metrics_path
        if self.state is not EngineState.READY or not self._serves_http or path is None:
            return None
        try:
            response = await self._http.get(self.url + path, timeout=2.0)
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        return parse_engine_metrics(response.text)

    def note_token(self) -> None:
        """Progress: a token relayed, or a request started (an idle engine is not stalled)."""
        self.last_token_at = time.monotonic()

    def _quiet_for(self, seconds: float) -> bool:
        return time.monotonic() - self.last_token_at > seconds

    def stalled(self) -> bool:
        return self.inflight() > 0 and self._quiet_for(self.policy.stall_timeout_s)

    async def _follow_counter(self) -> None:
        """Whole (non-streamed) answers relay no token until they end: the engine's own token counters (prompt
        + generated; vLLM, the sim) moving since the last health tick is progress too. (vLLM counts a prompt
        when its prefill ends: a single prefill longer than the stall timeout, alone, still looks hung.)"""
        load = await self.stats()
        if load is None:
            return
        counted = load.prompt_tokens + load.generation_tokens
        if counted != self._counted:  # moved, or the first look since it became busy (hangs: one tick later)
            self.note_token()
        self._counted = counted

    async def stop(self) -> None:
        await self._set(EngineState.STOPPING, "stopping")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._terminate()
        await self._http.aclose()
        await self._set(EngineState.STOPPED, "stopped")

    # -- internals -------------------------------------------------------------------------------------

    async def _set(self, state: EngineState, detail: str) -> None:
        if state is not self.state:
            log.info("engine %s: %s (%s)", self.config.kind, state.value, detail)
        self.state, self.detail = state, detail

    async def _run(self) -> None:
        failed_starts = 0
        backoff = self.policy.backoff_initial_s
        orphan = await asyncio.to_thread(procs.reap_recorded, self.pid_record)
        if orphan is not None:  # a previous agent died without stopping its engine
            log.warning("ended engine pid %s left running by a previous agent", orphan)
        while True:
            ok = await self._fetched()  # before the gate: a group's ranks launch together once all have the files
            if ok:
                await self._wait_gate()
                await self._set(EngineState.STARTING, "starting engine process")
                ok = await self._launch_and_wait_ready()
            if ok:
                failed_starts, backoff = 0, self.policy.backoff_initial_s
                await self._set(EngineState.READY, "serving")
                reason, hung = await self._watch_health()
            else:
                reason, hung = self.detail, False
            await self._terminate(self.policy.hung_grace_s if hung else self.policy.stop_grace_s)
            if self._misconfigured:
                await self._set(EngineState.FAILED, reason)
                return
            self.restarts += 1
            if self._restart_reason is not None:  # asked for: relaunch at once
                reason, self._restart_reason = self._restart_reason, None
                self._restart_event.clear()
                await self._set(EngineState.RESTARTING, reason)
                continue
            if not ok:
                failed_starts += 1
            self.crashes += 1
            if failed_starts >= self.policy.max_failed_starts:
                await self._set(EngineState.FAILED, f"gave up after {failed_starts} failed starts: {reason}")
                return
            await self._set(EngineState.RESTARTING, f"{reason}; restarting in {backoff:.0f}s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.policy.backoff_max_s)

    async def _fetched(self) -> bool:
        """The model's files are here (fetched now if needed); False, with the reason in `detail`, if not."""
        if self.fetch is None:
            return True
        await self._set(EngineState.STARTING, FETCHING_DETAIL)
        try:
            await self.fetch(lambda line: setattr(self, "detail", line))
        except Exception as exc:  # the hub's errors are many (network, auth, disk); each is a failed start
            self.detail = f"the model's download failed: {type(exc).__name__}: {exc}"
            return False
        self.fetch = None
        return True

    async def _wait_gate(self) -> None:
        while self.gate is not None and (why := self.gate()) is not None:
            if self.state is not EngineState.STARTING or self.detail != why:
                await self._set(EngineState.STARTING, why)
            await asyncio.sleep(self.policy.gate_poll_s)
        self._restart_reason = None  # a request made while waiting is served by this launch
        self._restart_event.clear()

    async def _launch_and_wait_ready(self) -> bool:
        self.port = self._fixed_port or free_port()
        try:
            plan = self.adapter.plan(self.config, self.port)
        except ValueError as exc:  # the message names the setting, never a secret's value
            self.detail = f"bad engine configuration: {exc}"
            self._misconfigured = True
            return False
        self._serves_http = plan.serves_http
        self.capabilities = plan.capabilities
        await self._spawn(plan)
        started = time.monotonic()
        deadline = started + self.policy.ready_timeout_s
        while time.monotonic() < deadline:
            if self._restart_reason is not None:
                self.detail = self._restart_reason
                return False
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                self.detail = f"engine exited with code {code} while starting (see {self.log_path})"
                return False
            if not plan.serves_http:
                if time.monotonic() - started >= self.policy.member_settle_s:
                    return True
            elif await self._probe_token():
                return True
            await asyncio.sleep(0.25 if not plan.serves_http else 1.0)
        self.detail = f"engine not ready within {self.policy.ready_timeout_s:.0f}s (see {self.log_path})"
        return False

    async def _probe_token(self) -> bool:
        """Healthy means a real token, not a live process or a working /v1/models."""
        try:
            health = await self._http.get(self.url + self.adapter.health_path, timeout=2.0)
            if health.status_code != 200:
                return False
            path, body = _probe_request(self.config)
            response = await self._http.post(self.url + path, json=body, timeout=60.0)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        self.note_token()
        return True

    async def _watch_health(self) -> tuple[str, bool]:
        """Why the engine stopped being healthy, and whether it is hung (unresponsive, or stalled with work)."""
        assert self._proc is not None  # set by _spawn before READY
        failures, self._counted, self.health_failures = 0, None, 0  # a new engine counts from 0
        restart = asyncio.ensure_future(self._restart_event.wait())
        try:
            while True:
                exited = asyncio.ensure_future(procs.exited(self._proc))
                done, _ = await asyncio.wait(
                    {exited, restart}, timeout=self.policy.health_interval_s, return_when=asyncio.FIRST_COMPLETED
                )
                if exited in done:
                    return f"engine exited with code {self._proc.returncode}", False
                exited.cancel()
                if restart in done:
                    return self._restart_reason or "restart requested", False
                if self._serves_http:
                    failures = self.health_failures = await self._check_health(failures)
                if failures >= self.policy.health_failures_to_restart:
                    return f"engine failed {failures} health checks in a row", True
                if self.inflight() == 0:
                    self._counted = None
                elif self._quiet_for(min(1.0, self.policy.stall_timeout_s / 2)):
                    await self._follow_counter()  # only when nothing relayed says it moves: scrapes cost the engine
                if self.stalled():
                    return (
                        f"engine hung: {self.inflight()} request(s) in flight, no token for "
                        f"{self.policy.stall_timeout_s:.0f}s",
                        True,
                    )
        finally:
            restart.cancel()

    async def _check_health(self, failures: int) -> int:
        try:
            response = await self._http.get(self.url + self.adapter.health_path, timeout=self.policy.health_interval_s)
        except httpx.HTTPError:
            return failures + 1
        return 0 if response.status_code == 200 else failures + 1

    async def _spawn(self, plan: LaunchPlan) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for path, text in plan.files:
            await asyncio.to_thread(_write_file, Path(path), text)
        if self._log_file is None:
            self._log_file = await asyncio.to_thread(procs.open_log, self.log_path)  # kept across restarts
        self._log_file.write(f"\n=== {time.ctime()} starting: {' '.join(procs.redacted(plan.argv))}\n".encode())
        self._log_file.flush()
        self._proc = procs.start(plan.argv, self._log_file, watch=self.watched, env=plan.env)
        self.pid = self._proc.pid
        await asyncio.to_thread(procs.record, self.pid_record, self.pid)

    async def _terminate(self, grace_s: float | None = None) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        grace = self.policy.stop_grace_s if grace_s is None else grace_s
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            _signal_group(proc.pid, signal.SIGCONT)  # a stopped (hung) engine takes its SIGTERM only when continued
            try:
                await asyncio.wait_for(procs.exited(proc), grace)
            except TimeoutError:
                log.warning("engine pid %s ignored SIGTERM for %.0fs; killing", proc.pid, grace)
        # Whatever is left in the group (the engine's own workers) goes too.
        _signal_group(proc.pid, signal.SIGKILL)
        await procs.exited(proc)
        self.pid = None
        with contextlib.suppress(OSError):
            self.pid_record.unlink()


def _probe_request(config: EngineConfig) -> tuple[str, dict[str, object]]:
    """The smallest request that proves the engine computes: one token, or one embedding."""
    if config.task == "embed":
        return "/v1/embeddings", {"model": config.served_name, "input": "Hello"}
    return "/v1/completions", {"model": config.served_name, "prompt": "Hello", "max_tokens": 1, "temperature": 0}


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
