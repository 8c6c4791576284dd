"""Chaos: faults injected one after another into a namespace lab under load; what the clients saw, per fault.

    python -m cluster.bench chaos [--streams 64 --settle 10 --faults kill-engine,drain --max-tokens 64
                                   --sim-decode-ms 50 --deadline 60]

Three hosts (network namespaces with their own sshd, cluster/bench/netlab.py) come up with the real `cluster up
hosts.toml` over SSH, sim engines, one model with three replicas; ORCHARD_HOME is a fresh temporary folder. While
`--streams` closed loops send streaming chat requests (after a failure a loop pauses FAILURE_PAUSE_S), faults come
one at a time, `--settle` seconds apart: kill -9 h1's engine; kill -9 h2's agent; SIGSTOP h3's agent for
`--stop-seconds`; h1's cable unplugged at the bridge for `--link-seconds`; `cluster drain h2` until idle, then
undrain; a planned router restart (`cluster.bringup.headrouter.restart_router`); kill -9 the router (its keeper starts
it again); SIGTERM the router (it finishes its streams and stops; the operator runs `cluster up hosts.toml`); an
edit of the hosts file that changes every replica, applied with `cluster up hosts.toml`. A host not back within
`--recovery-timeout` is repaired as an operator would, with `cluster up hosts.toml` again.

Per fault, the requests that started in its window (fault start to fault end + recovery) or were in flight when
it struck (a stream a kill cuts started before it): sent, succeeded, failed before the first byte (an HTTP error
or no answer), ended mid-stream with an error event, cut (the body stopped without an error event or [DONE]), hung
(not finished within `--deadline`), and the seconds from the fault's end until the router lists the host ready
with a closed breaker and it gave a first byte to a request started after that end. "retried" is how much the
router's orchard_retries_total (requests sent to another worker after one failed before the first byte) grew
during the window, each router counted on its own (a restart's new router starts from 0). The arithmetic, pure
over what the run recorded, is in cluster/bench/chaos_tally.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import ValidationError
from rich.console import Console

from cluster.bench import chaos_tally, netlab
from cluster.bench.chaos_tally import FaultWindow, Outcome, RequestRecord, RetrySample, TallyRow
from cluster.bringup import drain, headrouter, labstate
from cluster.gateway.keys import operator_headers
from cluster.router.app import WORKER_HEADER
from cluster.router.rows import WorkerRow, WorkersReply
from worker.shared import procs
from worker.shared.models import BUNDLED_NAME
from worker.shared.procs import free_port

FAULTS = (
    "kill-engine",
    "kill-agent",
    "stop-agent",
    "cut-link",
    "drain",
    "restart-router",
    "kill-router",
    "term-router",
    "edit-hosts",
)
TARGETS = {
    "kill-engine": "h1",
    "kill-agent": "h2",
    "stop-agent": "h3",
    "cut-link": "h1",
    "drain": "h2",
    "restart-router": "",
    "kill-router": "",
    "term-router": "",
    "edit-hosts": "",
}  # "": the router, every worker
AGENT_MODULE, ENGINE_MODULE = "worker.agent", "worker.engines.programs.sim"
MODEL, HOSTS = "sim-model", 3
SUBNET = "10.213.9"  # not the lab tests' subnet: both may run on one machine
KILLS = ("kill-engine", "kill-agent")
NOTICE_S = 5.0  # a kill the router has not noticed by then: it never listed the host down
FAILURE_PAUSE_S = 0.5  # a loop whose request failed waits this long: a refusing router is not a busy loop


class ChaosError(Exception):
    """The lab could not be brought up, or a fault could not be injected; the message says why."""


@dataclass(frozen=True)
class ChaosConfig:
    streams: int = 64
    settle_s: float = 10.0
    faults: tuple[str, ...] = FAULTS
    max_tokens: int = 64
    sim_options: tuple[tuple[str, str], ...] = (("decode-ms-per-token", "50"),)
    deadline_s: float = 60.0  # a request not finished by then is hung
    stop_s: float = 20.0
    link_s: float = 15.0
    recovery_timeout_s: float = 60.0
    vllm: bool = False  # h3 runs the real vLLM engine; the model is then the bundled one (the sims serve its name)

    @property
    def model(self) -> str:
        return BUNDLED_NAME if self.vllm else MODEL

    @property
    def engines(self) -> list[str]:
        return ["sim", "sim", "vllm"] if self.vllm else ["sim"] * HOSTS


# --- load: closed loops of streaming requests -----------------------------------------------------------------------


@dataclass
class Load:
    """`streams` closed loops of streaming chat requests through the router; every request's record, and every
    first byte as (request start, worker) as it arrives (recovery waits on those)."""

    url: str
    config: ChaosConfig
    records: list[RequestRecord] = field(default_factory=list)
    first_bytes: list[tuple[float, str]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.config.streams + 8, max_keepalive_connections=self.config.streams)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.config.deadline_s + 5), limits=limits) as client:
            await asyncio.gather(*(self._loop(client, stream) for stream in range(self.config.streams)))

    def served_since(self, worker: str, since: float) -> bool:
        return any(started >= since and worker in ("", who) for started, who in reversed(self.first_bytes))

    async def _loop(self, client: httpx.AsyncClient, stream: int) -> None:
        sent = 0
        while not self.stopping.is_set():
            ask = [{"role": "user", "content": f"chaos stream {stream} turn {sent}"}]
            body = {
                "model": self.config.model,
                "messages": ask,
                "max_tokens": self.config.max_tokens,
                "temperature": 0,
                "stream": True,
            }
            record = await self._one(client, body)
            self.records.append(record)
            sent += 1
            if record.outcome != "ok":
                await asyncio.sleep(FAILURE_PAUSE_S)

    async def _one(self, client: httpx.AsyncClient, body: dict[str, object]) -> RequestRecord:
        started, worker, status, first_byte = time.monotonic(), "", 0, 0.0
        outcome: Outcome = "refused"
        try:
            async with asyncio.timeout(self.config.deadline_s):
                async with client.stream("POST", self.url + "/v1/chat/completions", json=body) as response:
                    status, worker = response.status_code, response.headers.get(WORKER_HEADER, "")
                    if status != 200:
                        await response.aread()
                        return RequestRecord(started, time.monotonic(), "refused", worker, status)
                    first_byte, outcome = time.monotonic(), "cut"
                    self.first_bytes.append((started, worker))  # the router answers once its worker has
                    outcome = await _read_events(response)
        except TimeoutError:
            outcome = "hung"
        except httpx.HTTPError:
            pass  # no answer ("refused") or a body that stopped ("cut"), as `outcome` already says
        return RequestRecord(started, time.monotonic(), outcome, worker, status, first_byte)


async def _read_events(response: httpx.Response) -> Outcome:
    """ok: [DONE] after content; error_event: a `data:` line carrying an error; cut: the body just stopped."""
    errored = False
    async for line in response.aiter_lines():
        if line == "data: [DONE]":
            return "error_event" if errored else "ok"
        if line.startswith("data: {") and '"error"' in line[:20]:
            errored = True
    return "error_event" if errored else "cut"


# --- faults ---------------------------------------------------------------------------------------------------------


@dataclass
class Chaos:
    """The lab under load: injects one fault, waits for the host to serve again, repairs it if it does not."""

    net: netlab.Lab
    home: Path
    hosts_file: Path
    url: str
    config: ChaosConfig
    load: Load
    say: Console
    headers: dict[str, str]
    routers: list[int]  # every router pid seen, for the teardown
    edits: int = 0  # hosts-file edits so far (each a new seed)

    def host(self, label: str) -> netlab.LabHost:
        return next(h for h in self.net.hosts if f"h{h.index}" == label)

    def pid_of(self, label: str, module: str) -> int:
        found = netlab.running(self.host(label), module)
        if len(found) != 1:
            raise ChaosError(f"{len(found)} processes run `-m {module}` in {label}, not 1")
        return found[0]

    async def inject(self, fault: str) -> FaultWindow:
        label = TARGETS[fault]
        self.say.print(f"[bold]{fault}[/] {label or 'router'}")
        start, note = time.monotonic(), ""
        if fault in KILLS:
            os.kill(self.pid_of(label, ENGINE_MODULE if fault == "kill-engine" else AGENT_MODULE), signal.SIGKILL)
        elif fault == "stop-agent":
            await self._stopped(self.pid_of(label, AGENT_MODULE))
        elif fault == "cut-link":
            await self._unplugged(self.host(label))
        elif fault == "drain":
            note = await asyncio.to_thread(self._drained, label)
        elif fault in ("kill-router", "term-router"):
            note = await asyncio.to_thread(
                self._router_stopped, signal.SIGKILL if fault == "kill-router" else signal.SIGTERM
            )
        elif fault == "edit-hosts":
            note = await asyncio.to_thread(self._edited)
        else:
            await asyncio.to_thread(self._restart_router)
        end = time.monotonic()
        ready, recovery = await self.recovery(label, end, seen_down=fault not in KILLS)
        if recovery is None:
            note = (note + "; " if note else "") + await self.repair(label)
        return FaultWindow(
            fault,
            label,
            start,
            end,
            time.monotonic() if recovery is None else end + recovery,
            recovery,
            note,
            ready_s=ready,
        )

    async def _stopped(self, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.config.stop_s)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def _unplugged(self, host: netlab.LabHost) -> None:
        await asyncio.to_thread(self.net.set_link, host, False)
        try:
            await asyncio.sleep(self.config.link_s)
        finally:
            await asyncio.to_thread(self.net.set_link, host, True)

    def _drained(self, label: str) -> str:
        """`cluster drain` (until idle, bounded) then `cluster undrain`; what was left in flight, if anything."""
        with httpx.Client(timeout=10, headers=self.headers) as client:
            row = drain.set_draining(client, self.url, label, True)
            left = drain.wait_idle(client, self.url, {row.address}, self.config.recovery_timeout_s)
            drain.set_draining(client, self.url, label, False)
        return f"{left} still in flight at undrain" if left else ""

    def _restart_router(self) -> None:
        headrouter.restart_router(self.home, lambda m: self.say.print(f"  • {m}"))  # the planned hand-over
        if state := labstate.read_state(self.home):
            self.routers.append(state.router_pid)

    def _router_stopped(self, how: signal.Signals) -> str:
        """The router process itself (not its keeper) killed or told to stop. Killed, its keeper starts it again;
        stopped, it finishes its streams and the keeper, seeing a clean exit, stops too: the operator then runs
        `cluster up hosts.toml`, as they would. Says how it came back."""
        state = labstate.read_state(self.home)
        if state is None:
            raise ChaosError("no lab state: no router to stop")
        router = next(iter(procs.descendants(state.router_pid)), state.router_pid)  # a keeper's child, if kept
        os.kill(router, how)
        if how is signal.SIGKILL:
            return "the keeper started it again"
        deadline = time.monotonic() + self.config.deadline_s + 5
        while procs.alive(router) and time.monotonic() < deadline:
            time.sleep(0.1)
        result = cli(self.home, "up", str(self.hosts_file))
        if (state := labstate.read_state(self.home)) is not None:
            self.routers.append(state.router_pid)
        return f"stopped; `cluster up` (exit {result.returncode}) started it again"

    def _edited(self) -> str:
        """Every replica's configuration edited (a new sim seed on each host), applied with `cluster up`."""
        self.edits += 1
        text = re.sub(r'"seed" = "\d+", ', "", self.hosts_file.read_text())
        self.hosts_file.write_text(text.replace("sim_options = { ", f'sim_options = {{ "seed" = "{self.edits}", '))
        result = cli(self.home, "up", str(self.hosts_file))
        waves = next((line.strip() for line in result.stdout.splitlines() if "rolling change" in line), "")
        return f"`cluster up` exit {result.returncode}" + (f"; {waves}" if waves else "")

    async def recovery(self, label: str, since: float, seen_down: bool = True) -> tuple[float | None, float | None]:
        """Seconds from `since` until the router lists the host healthy (ready), and until, healthy, it also gave
        a newer request its first byte (served: that waits for the router to send it one, so it includes the
        closed loops' own pace); for "", the router: every worker healthy and any answer. None: not within the
        recovery timeout. After a kill (`seen_down` False) the router lists the host ready until it notices, so
        ready counts only once it was seen unhealthy (or NOTICE_S passed without that)."""
        deadline, ready = since + self.config.recovery_timeout_s, None
        async with httpx.AsyncClient(timeout=2.0, headers=self.headers) as client:
            while time.monotonic() < deadline:
                served = self.load.served_since(label, since)
                healthy = chaos_tally.healthy(await _rows(client, self.url), label, HOSTS)
                seen_down = seen_down or not healthy or time.monotonic() - since > NOTICE_S
                if healthy and seen_down:
                    ready = ready if ready is not None else time.monotonic() - since
                    if served:
                        return ready, time.monotonic() - since
                await asyncio.sleep(0.25)
        return ready, None

    async def repair(self, label: str) -> str:
        """What an operator does when a host stays away: `cluster up hosts.toml` again; says how it went."""
        self.say.print(f"  • {label or 'router'} not back within {self.config.recovery_timeout_s:g} s: cluster up")
        started = time.monotonic()
        result = await asyncio.to_thread(cli, self.home, "up", str(self.hosts_file))
        _, back = await self.recovery(label, time.monotonic())
        took = time.monotonic() - started
        state = "serving" if back is not None else "still not serving"
        return f"not back by itself; `cluster up` (exit {result.returncode}) → {state} after {took:.1f} s"


async def _rows(client: httpx.AsyncClient, url: str) -> list[WorkerRow]:
    try:
        answer = await client.get(url + "/orchard/workers")
        return WorkersReply.model_validate_json(answer.content).workers if answer.status_code == 200 else []
    except (httpx.HTTPError, ValidationError):
        return []


async def _sample_retries(url: str, headers: dict[str, str], into: list[RetrySample], stop: asyncio.Event) -> None:
    """The retry counter every half second, with the pid of the router that answered. During a restart both
    routers answer: the pid /orchard/workers gives before and after /metrics, on one kept-alive connection, must
    match, or the sample is dropped."""
    async with httpx.AsyncClient(timeout=2.0, headers=headers, limits=httpx.Limits(max_connections=1)) as client:
        while not stop.is_set():
            try:
                pid = await _router_pid(client, url)
                answer = (await client.get(url + "/metrics")).raise_for_status()
                if pid == await _router_pid(client, url):
                    into.append(RetrySample(time.monotonic(), pid, chaos_tally.retries_total(answer.text)))
            except (httpx.HTTPError, ValidationError):
                pass  # the router restarts: no sample
            await asyncio.sleep(0.5)


async def _router_pid(client: httpx.AsyncClient, url: str) -> int:
    answer = (await client.get(url + "/orchard/workers")).raise_for_status()
    return WorkersReply.model_validate_json(answer.content).router_pid


# --- the run --------------------------------------------------------------------------------------------------------


def models_toml(config: ChaosConfig) -> str:
    """One model, a replica on every host (a real vLLM context length when h3 runs vLLM)."""
    length = "max_model_len = 2048\n" if config.vllm else ""
    return f'[[models]]\nname = "{config.model}"\nsource = "{config.model}"\nreplicas = {HOSTS}\n{length}'


@dataclass(frozen=True)
class ChaosRun:
    windows: list[FaultWindow]
    records: list[RequestRecord]
    retries: list[RetrySample]
    notes: list[str]


def cli(home: Path, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """`cluster ARGS` as an operator runs it, against the lab's ORCHARD_HOME."""
    env = {**os.environ, "ORCHARD_HOME": str(home)}
    command = [sys.executable, "-m", "cluster.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def run(config: ChaosConfig, say: Console) -> list[TallyRow]:
    """Build the lab, bring it up, drive it through the faults, take everything down again; the table's rows."""
    root = Path(tempfile.mkdtemp(prefix="orchard-chaos-"))
    previous = os.environ.get("ORCHARD_HOME")
    os.environ["ORCHARD_HOME"] = str(root / "home")  # whatever reads it in this process: never ~/.orchard
    try:
        with netlab.lab(root / "net", HOSTS, SUBNET) as net:
            done = _in_lab(net, root, config, say)
    finally:
        if previous is None:
            os.environ.pop("ORCHARD_HOME", None)
        else:
            os.environ["ORCHARD_HOME"] = previous
    rows = chaos_tally.tally(done.records, done.windows, done.retries, config.recovery_timeout_s)
    options = " ".join(f"{k}={v}" for k, v in config.sim_options)
    say.print(chaos_tally.table(rows, f"chaos: {config.streams} streams, {config.max_tokens} tokens ({options})"))
    for note in done.notes:
        say.print(f"• {note}")
    (root / "chaos.json").write_text(json.dumps(dataclasses.asdict(done)))  # monotonic seconds, for a closer look
    say.print(f"logs, and every request in chaos.json: {root}")
    return rows


def _in_lab(net: netlab.Lab, root: Path, config: ChaosConfig, say: Console) -> ChaosRun:
    home, hosts_file = root / "home", root / "lab.toml"
    port, options = free_port(), dict(config.sim_options)
    hosts_file.write_text(net.hosts_toml(sys.executable, config.engines, models_toml(config), port, options))
    routers: list[int] = []
    try:
        say.print(f"cluster up {hosts_file} ({HOSTS} namespace hosts over SSH)…")
        started = time.monotonic()
        up = cli(home, "up", str(hosts_file))
        state = labstate.read_state(home)
        if state is not None:
            routers.append(state.router_pid)
        if up.returncode != 0 or state is None:
            raise ChaosError(f"cluster up failed (exit {up.returncode}): {(up.stdout + up.stderr)[-2000:]}")
        say.print(f"  • all ready after {time.monotonic() - started:.1f} s; router at {state.url}")
        return asyncio.run(
            drive(
                Chaos(
                    net,
                    home,
                    hosts_file,
                    state.url,
                    config,
                    Load(state.url, config),
                    say,
                    operator_headers(home),
                    routers,
                )
            )
        )
    finally:
        _teardown(home, routers, say)


async def drive(chaos: Chaos) -> ChaosRun:
    """Load for the whole run; calm for --settle seconds, then each fault, each followed by --settle calm."""
    config, say, stop = chaos.config, chaos.say, asyncio.Event()
    retries: list[RetrySample] = []
    tasks = [
        asyncio.create_task(chaos.load.run()),
        asyncio.create_task(_sample_retries(chaos.url, chaos.headers, retries, stop)),
    ]
    windows: list[FaultWindow] = []
    notes = [
        "retried: requests the router sent to another worker after one failed before the first byte, the increase"
        " of orchard_retries_total in the window (each router's from its own start; ?: no router sampled)"
    ]
    try:
        say.print(f"{config.streams} streams running; {config.settle_s:g} s calm first")
        await asyncio.sleep(config.settle_s)
        for fault in config.faults:
            try:
                window = await chaos.inject(fault)
            except (ChaosError, drain.DrainError, labstate.LabError, OSError) as exc:
                notes.append(f"{fault}: skipped, {exc}")
                say.print(f"  • skipped: {exc}")
                continue
            windows.append(window)
            back = "not by itself" if window.recovery_s is None else f"after {window.recovery_s:.1f} s"
            ready = "" if window.ready_s is None else f" (ready after {window.ready_s:.1f} s)"
            say.print(f"  • serving again {back}{ready}" + (f" ({window.note})" if window.note else ""))
            if window.note:
                notes.append(f"{fault}: {window.note}")
            await asyncio.sleep(config.settle_s)
    finally:
        chaos.load.stopping.set()
        stop.set()
        _, late = await asyncio.wait(tasks, timeout=config.deadline_s + 5)  # each request ends within its deadline
        for task in late:
            task.cancel()
    return ChaosRun(windows, list(chaos.load.records), retries, notes)


def _teardown(home: Path, routers: list[int], say: Console) -> None:
    """`cluster down` without draining; then no router this run saw may outlive it (namespaces go with the lab)."""
    state = labstate.read_state(home)
    if state is not None:
        routers.append(state.router_pid)
    try:
        down = cli(home, "down", "--drain-timeout", "0", timeout_s=180)
        say.print(f"cluster down: exit {down.returncode}")
    except subprocess.TimeoutExpired:
        say.print("cluster down: no answer within 180 s; stopping what is left")
    for pid in set(routers):
        if procs.alive(pid):
            procs.terminate_tree(pid, grace_s=5)
