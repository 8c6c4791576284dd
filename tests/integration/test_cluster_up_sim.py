"""`cluster up` in the foreground: Ctrl-C or `cluster down` from another shell stops everything it started."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cluster.bringup import headrouter, local, units
from cluster.router.rows import WorkersReply
from tests.conftest import SIM_MODEL, agent_config, free_port, run_cli, start_cluster, stop_cluster, wait_until
from worker.shared import procs


@dataclass
class Foreground:
    up: subprocess.Popen[str]
    pids: list[int]  # cluster up, router, agent, engine


def _ignore_sigint() -> None:
    # The worst case for Ctrl-C: a parent shell that starts background jobs with SIGINT ignored. `cluster up`
    # must install its own handler rather than inherit this disposition.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def foreground(tmp_path: Path) -> Iterator[Foreground]:
    """A foreground `cluster up --engine sim`; whatever the test does, everything it started is stopped after."""
    argv = [
        sys.executable,
        "-m",
        "cluster.cli",
        "up",
        "--engine",
        "sim",
        "--model",
        "sim-model",
        "--port",
        str(free_port()),
    ]
    up = subprocess.Popen(
        argv,
        env={**os.environ, "ORCHARD_HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint,
    )
    pids = [up.pid]
    try:
        state = wait_until(lambda: local.running_state(tmp_path), 60, "state")
        wait_until(lambda: procs.descendants(state.agent_pid), 30, "the engine process")
        pids += [state.router_pid, state.agent_pid, *procs.descendants(state.agent_pid)]
        yield Foreground(up, pids)
    finally:
        run_cli(["down"], tmp_path, timeout_s=60)
        for pid in pids:
            procs.terminate_tree(pid, grace_s=5)
        up.wait(timeout=10)


def _wait_serving(up: subprocess.Popen[str]) -> str:
    assert up.stdout is not None
    lines = []
    for line in up.stdout:
        lines.append(line)
        if line.startswith("Serving."):
            return "".join(lines)
    raise AssertionError("cluster up ended before serving:\n" + "".join(lines))


@pytest.mark.parametrize("how", ["ctrl-c", "cluster down"])
def test_foreground_up_stops_everything(tmp_path: Path, foreground: Foreground, how: str) -> None:
    up, pids = foreground.up, foreground.pids
    output = _wait_serving(up)
    assert "Orchard is up at http://127.0.0.1:" in output and "curl -s" in output
    if how == "ctrl-c":
        up.send_signal(signal.SIGINT)
    else:
        down = run_cli(["down"], tmp_path, timeout_s=60)
        assert down.returncode == 0 and "stopped Orchard" in down.stdout
    assert up.wait(timeout=60) == 0
    wait_until(lambda: not any(procs.alive(pid) for pid in pids), 10, "every process to exit")
    assert not (tmp_path / "local.json").exists()


def test_second_up_reports_the_running_cluster(tmp_path: Path, foreground: Foreground) -> None:
    _wait_serving(foreground.up)
    again = run_cli(["up", "--engine", "sim", "--model", "sim-model"], tmp_path, timeout_s=60)
    assert again.returncode == 0 and "already running" in again.stdout


def test_up_on_a_busy_port_fails_clearly_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(["up", "--engine", "sim", "--model", "sim-model", "--port", str(port)], tmp_path, 60)
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "in use" in result.stderr
    assert not (tmp_path / "local.json").exists()


def test_local_cluster_is_open_until_a_key_exists_and_status_still_works(
    tmp_path: Path, foreground: Foreground
) -> None:
    output = _wait_serving(foreground.up)
    assert "Open to anyone on this machine: no API key exists yet" in output
    state = local.running_state(tmp_path)
    assert state is not None
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 2}
    assert httpx.post(state.url + "/v1/completions", json=body, timeout=30).status_code == 200
    created = run_cli(["keys", "create", "--team", "ml"], tmp_path, timeout_s=60)
    assert created.returncode == 0 and created.stdout.startswith("sk-orch-")
    key = created.stdout.strip()
    wait_until(
        lambda: httpx.post(state.url + "/v1/completions", json=body, timeout=30).status_code == 401,
        5,
        "the new key to switch auth on",
        interval_s=0.1,
    )
    with_key = httpx.post(
        state.url + "/v1/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    assert with_key.status_code == 200
    status = run_cli(["status"], tmp_path, timeout_s=60)  # the head's own operator key
    assert status.returncode == 0 and "ready" in status.stdout and "closed" in status.stdout  # the breaker
    listed = run_cli(["keys", "list"], tmp_path, timeout_s=60)
    assert listed.returncode == 0 and "ml" in listed.stdout and key not in listed.stdout


def test_drain_lets_the_running_stream_finish_refuses_new_work_then_undrain(
    tmp_path: Path, foreground: Foreground
) -> None:
    state = _serving(tmp_path, foreground)
    with _long_stream(state.url, 120) as lines:
        drained: list[subprocess.CompletedProcess[str]] = []
        waiter = threading.Thread(target=lambda: drained.append(run_cli(["drain", "127.0.0.1"], tmp_path, 60)))
        waiter.start()
        refused = wait_until(lambda: _refused(state.url), 10, "new requests refused while draining")
        # the router's own refusal once it knows; the agent's in the moment before its next sample reaches it
        message = refused.json()["error"]["message"]
        assert refused.headers["retry-after"] and ("No ready worker" in message or "draining" in message), message
        rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and "error" not in "".join(rest)  # the stream finished whole
    waiter.join(60)
    assert drained[0].returncode == 0 and "drained, idle" in drained[0].stdout, drained[0].stdout
    status = run_cli(["status"], tmp_path, timeout_s=60)
    assert "draining" in status.stdout
    assert run_cli(["undrain", "127.0.0.1"], tmp_path, 60).returncode == 0
    short = {"model": "sim-model", "prompt": "hi", "max_tokens": 2}
    wait_until(
        lambda: httpx.post(state.url + "/v1/completions", json=short, timeout=30).status_code == 200,
        10,
        "requests served again after undrain",
    )


def _refused(url: str) -> httpx.Response | None:
    response = httpx.post(
        url + "/v1/completions", json={"model": "sim-model", "prompt": "hi", "max_tokens": 2}, timeout=30
    )
    return response if response.status_code == 503 else None


def test_down_lets_a_running_stream_finish_first(tmp_path: Path, foreground: Foreground) -> None:
    state = _serving(tmp_path, foreground)
    with _long_stream(state.url, 60) as lines:
        downs: list[subprocess.CompletedProcess[str]] = []
        stopper = threading.Thread(target=lambda: downs.append(run_cli(["down"], tmp_path, 90)))
        stopper.start()
        rest = [line for line in lines if line.startswith("data: ")]
    stopper.join(90)
    assert rest[-1] == "data: [DONE]" and "error" not in "".join(rest)  # not cut by the stop
    assert downs[0].returncode == 0 and "all finished" in downs[0].stdout, downs[0].stdout


def _serving(home: Path, foreground: Foreground) -> local.LocalState:
    _wait_serving(foreground.up)
    state = local.running_state(home)
    assert state is not None
    return state


@contextlib.contextmanager
def _long_stream(url: str, tokens: int) -> Iterator[Iterator[str]]:
    """A stream running on the one worker (its first chunk read): its remaining lines."""
    body = {"model": "sim-model", "prompt": "a long story", "max_tokens": tokens, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        yield lines


def test_status_json_and_watch_show_rates_and_ttft(tmp_path: Path, foreground: Foreground) -> None:
    state = _serving(tmp_path, foreground)
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 20, "stream": True}
    with httpx.stream("POST", state.url + "/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200 and list(response.iter_lines())
    listed = run_cli(["status", "--json"], tmp_path, timeout_s=60)
    assert listed.returncode == 0, listed.stderr
    [row] = WorkersReply.model_validate_json(listed.stdout).workers
    assert row.ready and row.ttft_p50_s is not None and row.ttft_p50_s > 0  # the stream just timed
    env = {**os.environ, "ORCHARD_HOME": str(tmp_path)}
    watching = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "status", "--watch"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_ignore_sigint,
    )  # as a background job starts it
    assert watching.stdout is not None
    titles: list[str] = []
    for line in watching.stdout:
        if line.strip().startswith("Orchard at"):
            titles.append(line.strip())
            if len(titles) == 3:
                break
    watching.send_signal(signal.SIGINT)  # Ctrl-C ends it cleanly
    _, err = watching.communicate(timeout=30)
    assert watching.returncode == 0 and "Traceback" not in err, err
    assert len(titles) == 3 and len(set(titles)) > 1  # redrawn each second, stamped with the time


class FakeSystemd:
    """A user manager for the router service test: `restart` runs the unit file's ExecStart as written (so the
    router runs from the very text `cluster up` installs), `show` names its pid, `stop`/`disable --now` stop it."""

    def __init__(self, units: Path, logs: Path) -> None:
        self.units, self.logs = units, logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.calls: list[str] = []

    def __call__(self, argv: list[str], stdin: str | None) -> str:
        line = shlex.join(a for a in argv if a != "--user")
        self.calls.append(line)
        name, proc = argv[-1], self.running.get(argv[-1])
        if line.startswith("systemctl restart"):
            exec_start = _unit_value(self.units / name, "ExecStart").replace("$$", "$").replace("%%", "%")
            with procs.open_log(self.logs / "router.log") as log:
                self.running[name] = subprocess.Popen(
                    shlex.split(exec_start), stdout=log, stderr=log, start_new_session=True
                )
        elif line.startswith("systemctl show"):
            return f"{proc.pid if proc and proc.poll() is None else 0}\n"
        elif line.startswith(("systemctl stop", "systemctl disable --now")) and proc:
            proc.terminate()
            if "--now" in argv:
                proc.wait(70)
        elif line.startswith("loginctl show-user"):
            return "yes\n"
        return ""


def _unit_value(path: Path, key: str) -> str:
    return next(line.split("=", 1)[1] for line in path.read_text().splitlines() if line.startswith(f"{key}="))


def test_hand_overs_into_the_router_service_refuse_nothing_and_leave_one_slot_enabled(tmp_path: Path) -> None:
    """From a detached router to the service's slot a, then to b: each new router is started by the service
    manager from its unit file and takes the socket over before the old slot is disabled and stopped."""
    agent = agent_config("sim", SIM_MODEL, tmp_path / "logs-agent")
    cluster = start_cluster(tmp_path, [agent], handover=str(tmp_path / "router.sock"))
    manager = FakeSystemd(tmp_path / "units", tmp_path / "logs")
    service = units.RouterService("linux", tmp_path, "lab", str(tmp_path), False, tmp_path / "units", manager)
    results: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            try:
                results.append(str(httpx.post(cluster.url + "/v1/chat/completions", json=body, timeout=10).status_code))
            except httpx.HTTPError as exc:
                results.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    said: list[str] = []
    try:
        for thread in threads:
            thread.start()
        old = cluster.fleet.children[-1].pid
        pid_a, slot_a = headrouter._hand_over(old, "", cluster.router, tmp_path, said.append, service)
        pid_b, slot_b = headrouter._hand_over(pid_a, slot_a, cluster.router, tmp_path, said.append, service)
        stop.set()
        for thread in threads:
            thread.join()
        assert (slot_a, slot_b) == ("a", "b") and service.main_pid("b") == pid_b
        assert results and set(results) == {"200"}, results
        started_b = manager.calls.index("systemctl restart orchard-router-b.service")
        assert manager.calls[started_b + 1 :].count("systemctl disable orchard-router-a.service") == 1  # after b
        assert "systemctl stop --no-block orchard-router-a.service" in manager.calls[started_b:]
        wait_until(lambda: not procs.alive(old) and not procs.alive(pid_a), 20, "the old routers to exit")
        assert service.remove() == ["a", "b"] and not procs.alive(pid_b)  # `cluster down`
    finally:
        stop.set()
        for proc in manager.running.values():
            proc.kill()
            proc.wait()
        stop_cluster(cluster)
