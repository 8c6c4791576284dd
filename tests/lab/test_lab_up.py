"""`cluster up hosts.toml` on three real SSH hosts (network namespaces with their own sshd).

Two hosts run the sim engine (one model, two replicas), one runs the real vLLM engine with the bundled model.
Traffic goes only to loopback and to the namespace addresses created here.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cluster.bringup import certs, labstate
from cluster.pki import authority, pins
from tests.conftest import REPO, agent_info, free_port, run_cli, wait_until
from tests.lab import netns
from tests.lab.agent_probe import served_certificate
from worker.shared import procs
from worker.shared.models import BUNDLED_NAME

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
if reason := netns.available():
    pytestmark.append(pytest.mark.skip(reason=reason))

MODELS = f"""
[[models]]
name = "sim-model"
source = "sim-model"
hosts = ["h1", "h2"]
policy = "least_loaded"  # streams that arrive together spread by load, whatever each host measured before

[[models]]
name = "{BUNDLED_NAME}"
source = "{BUNDLED_NAME}"
hosts = ["h3"]
max_model_len = 2048
"""


@dataclass
class RunningLab:
    net: netns.Lab
    home: Path
    hosts_file: Path
    up_seconds: float
    up_output: str
    url: str

    def agent_pids(self) -> dict[str, int]:
        pids = {}
        for host in self.net.hosts:
            pidfile = host.orchard_dir / "agent.pid"
            if pidfile.exists():
                pids[f"h{host.index}"] = int(pidfile.read_text())
        return pids


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    root = tmp_path_factory.mktemp("netlab")
    with netns.lab(root / "net", 3) as net:
        home = root / "home"
        port = free_port()
        hosts_file = root / "lab.toml"
        hosts_file.write_text(net.hosts_toml(sys.executable, ["sim", "sim", "vllm"], MODELS, port))
        started = time.monotonic()
        try:  # `down` whatever `up` did: a half-started lab must not outlive the test
            result = run_cli(["up", str(hosts_file)], home, timeout_s=1200)
            elapsed = time.monotonic() - started
            assert result.returncode == 0, result.stdout + result.stderr
            yield RunningLab(net, home, hosts_file, elapsed, result.stdout, f"http://127.0.0.1:{port}")
        finally:
            run_cli(["down"], home, timeout_s=180)


def test_all_agents_ready_and_the_router_lists_both_models(running: RunningLab) -> None:
    assert running.up_output.count("ready") >= 3
    models = {m["id"] for m in httpx.get(running.url + "/v1/models", timeout=10).json()["data"]}
    assert models == {"sim-model", BUNDLED_NAME}
    print(f"\ncluster up -> all ready: {running.up_seconds:.1f}s")


def test_the_openai_sdk_gets_answers_from_both_engines(running: RunningLab) -> None:
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    answer = client.chat.completions.create(
        model=BUNDLED_NAME,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=30,
    )
    assert "Paris" in (answer.choices[0].message.content or "")
    sim = client.completions.create(model="sim-model", prompt="hello", max_tokens=4)
    assert sim.usage is not None and sim.usage.completion_tokens == 4


def test_two_replicas_both_serve(running: RunningLab) -> None:
    assert _served_by(running) == {"h1", "h2"}


def _served_by(running: RunningLab) -> set[str]:
    body = {"model": "sim-model", "prompt": "spread me", "max_tokens": 40, "stream": True}
    served_by: set[str] = set()
    with httpx.Client(timeout=60) as client:
        streams = [client.stream("POST", running.url + "/v1/completions", json=body) for _ in range(4)]
        responses = [s.__enter__() for s in streams]  # four in flight at once: least-loaded spreads them
        for stream, response in zip(streams, responses, strict=True):
            served_by.add(response.headers["x-orchard-worker"])
            response.read()
            stream.__exit__(None, None, None)
    return served_by


def test_rerunning_up_changes_nothing(running: RunningLab) -> None:
    before = running.agent_pids()
    state = labstate.read_state(running.home)
    assert state is not None
    started = time.monotonic()
    again = run_cli(["up", str(running.hosts_file)], running.home, timeout_s=600)
    print(f"\ncluster up re-run with nothing changed: {time.monotonic() - started:.1f}s")
    assert again.returncode == 0, again.stdout + again.stderr
    assert running.agent_pids() == before
    after = labstate.read_state(running.home)
    assert after is not None and after.router_pid == state.router_pid
    assert "agent running" in again.stdout and "agent started" not in again.stdout


def _long_stream(url: str, ends: list[tuple[str, str]], index: int, max_tokens: int = 150) -> None:
    """A ~14 s sim stream (150 tokens); records (worker, "finished" or how it ended)."""
    body = {"model": "sim-model", "prompt": f"{index}: keep going", "max_tokens": max_tokens, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
        whole = "".join(lines).replace(" ", "")
        ok = lines[-1:] == ["data: [DONE]"] and '"error"' not in whole and '"finish_reason":"length"' in whole
        ends.append((response.headers.get("x-orchard-worker", ""), "finished" if ok else "\n".join(lines[-3:])))


def test_an_edited_file_restarts_only_what_changed_after_draining_it(running: RunningLab) -> None:
    before = running.agent_pids()
    ends: list[tuple[str, str]] = []
    streams = [threading.Thread(target=_long_stream, args=(running.url, ends, i)) for i in range(6)]
    for thread in streams:  # distinct prompts, no shared prefix: spread over h1 and h2 by load
        thread.start()
    time.sleep(1.0)
    text = running.hosts_file.read_text()
    running.hosts_file.write_text(text.replace('name = "h2"\n', 'name = "h2"\nsim_options = { seed = 3 }\n'))
    result = run_cli(["up", str(running.hosts_file)], running.home, timeout_s=600)
    for thread in streams:
        thread.join(timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "draining h2 before restarting" in result.stdout and "drained" in result.stdout, result.stdout
    assert "h2" in {worker for worker, _ in ends} and [end for _, end in ends] == ["finished"] * 6, ends
    after = running.agent_pids()
    assert after["h1"] == before["h1"] and after["h3"] == before["h3"]
    assert after["h2"] != before["h2"]
    assert "h2: agent started" in result.stdout


def test_an_edit_to_every_replica_of_a_model_rolls_so_that_it_never_stops_answering(running: RunningLab) -> None:
    """Both sim-model replicas change: one restarts (drained) while the other serves, then the other; a client
    asking all the while is refused nothing."""
    before = running.agent_pids()
    statuses: list[str] = []
    stop = threading.Event()

    def ask() -> None:
        body = {"model": "sim-model", "prompt": "still there?", "max_tokens": 4}
        with httpx.Client(base_url=running.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    statuses.append(str(client.post("/v1/completions", json=body).status_code))
                except httpx.HTTPError as exc:
                    statuses.append(repr(exc))

    asking = threading.Thread(target=ask)
    asking.start()
    text = running.hosts_file.read_text().replace("sim_options = { seed = 3 }\n", "")
    for host in ("h1", "h2"):
        text = text.replace(f'name = "{host}"\n', f'name = "{host}"\nsim_options = {{ seed = 11 }}\n')
    running.hosts_file.write_text(text)
    try:
        result = run_cli(["up", str(running.hosts_file)], running.home, timeout_s=600)
        time.sleep(1.0)
    finally:
        stop.set()
        asking.join(timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rolling change in 2 waves" in result.stdout, result.stdout
    after = running.agent_pids()
    assert after["h1"] != before["h1"] and after["h2"] != before["h2"] and after["h3"] == before["h3"]
    print(f"\nrolling change of both replicas: {statuses.count('200')} of {len(statuses)} requests answered")
    assert len(statuses) > 20 and set(statuses) == {"200"}, collections.Counter(statuses)


def test_status_shows_every_host(running: RunningLab) -> None:
    result = run_cli(["status"], running.home, timeout_s=60)
    assert result.returncode == 0
    for name in ("h1", "h2", "h3"):
        assert name in result.stdout


def test_logs_of_a_host_over_ssh(running: RunningLab) -> None:
    result = run_cli(["logs", "h1", "-n", "5"], running.home, timeout_s=60)
    assert result.returncode == 0 and "agent" in result.stdout


def test_from_another_host_an_agent_admits_only_the_router_and_its_engine_is_unreachable(
    running: RunningLab, tmp_path: Path
) -> None:
    h1, h2 = running.net.hosts[0], running.net.hosts[1]
    agent = f"{h1.address}:50051"
    router = authority.tls_folder(running.home, certs.ROUTER)
    engine_port = agent_info(agent, router).engine_url.rpartition(":")[2]
    other = authority.create(authority.now_utc(), "another lab's CA")
    stranger = tmp_path / "stranger"
    authority.write_identity(stranger, other, authority.issue(other, "x", ("orchard-router",), authority.now_utc()))
    probe = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            h2.namespace,
            sys.executable,
            "-m",
            "tests.lab.agent_probe",
            agent,
            str(router),
            str(stranger),
            f"{h1.address}:{engine_port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout.splitlines()[-1]) == {
        "plaintext": "refused: UNAVAILABLE",
        "another CA": "refused: UNAVAILABLE",
        "the router's certificate": "accepted: h1",
        "engine port": "ConnectionRefusedError",
    }


def test_certificates_rotate_across_the_lab_under_16_streams(running: RunningLab) -> None:
    router = authority.tls_folder(running.home, certs.ROUTER)
    issued = {pin.label: pin.certificate for pin in pins.read(router).agents.values()}
    assert sorted(issued) == ["h1", "h2", "h3"]
    ends: list[tuple[str, str]] = []
    streams = [threading.Thread(target=_long_stream, args=(running.url, ends, i, 60)) for i in range(16)]
    for thread in streams:
        thread.start()
    time.sleep(1.0)
    result = run_cli(["certs", "rotate"], running.home, timeout_s=120)
    for thread in streams:
        thread.join(timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [end for _, end in ends] == ["finished"] * 16, ends
    book = pins.read(router)
    assert all(book.agents[f"{h.address}:50051"].certificate != issued[f"h{h.index}"] for h in running.net.hosts)
    for host in running.net.hosts:  # what each agent now presents to a new connection is what was issued
        assert _served(running, host) == _pinned(book, host), f"h{host.index}"
    body = {"model": "sim-model", "prompt": "after the rotation", "max_tokens": 4}
    for _ in range(4):  # new connections, new certificates, both replicas
        assert httpx.post(running.url + "/v1/completions", json=body, timeout=30).status_code == 200
    assert "h1" in run_cli(["status"], running.home, timeout_s=60).stdout


def _served(running: RunningLab, host: netns.LabHost) -> bytes:
    router = authority.tls_folder(running.home, certs.ROUTER)
    return served_certificate(f"{host.address}:50051", router / "ca.pem", router / "identity.pem")


def _pinned(book: pins.Pins, host: netns.LabHost) -> bytes:
    certificate = authority.certificate_of(book.agents[f"{host.address}:50051"].certificate.encode())
    return certificate.public_bytes(Encoding.DER)


def test_revoke_ends_a_hosts_certificate_and_gives_it_a_new_one_the_router_then_trusts(running: RunningLab) -> None:
    h2 = running.net.hosts[1]
    router = authority.tls_folder(running.home, certs.ROUTER)
    before = pins.read(router).agents[f"{h2.address}:50051"]
    result = run_cli(["certs", "revoke", "h2"], running.home, timeout_s=120)
    assert result.returncode == 0 and "new certificate installed" in result.stdout, result.stdout + result.stderr
    book = pins.read(router)
    after = book.agents[f"{h2.address}:50051"]
    names = authority.names_of(authority.certificate_of(after.certificate.encode()))
    assert not after.revoked and after.name in names and before.name not in names  # the old key cannot pass
    assert _served(running, h2) == _pinned(book, h2)
    wait_until(lambda: _served_by(running) == {"h1", "h2"}, 30, "h2 to serve again under its new certificate")
    shown = run_cli(["certs", "show"], running.home, timeout_s=60).stdout
    assert "h2 20" in shown and "revoked" not in shown, shown
    missing = run_cli(["certs", "revoke", "h9"], running.home, timeout_s=60)
    assert missing.returncode == 1 and "h9: not a host of the running lab (h1, h2, h3)" in missing.stderr


def test_down_leaves_no_agent_in_any_namespace(running: RunningLab) -> None:
    pids = running.agent_pids()
    assert len(pids) == 3
    result = run_cli(["down"], running.home, timeout_s=180)
    assert result.returncode == 0 and "stopped the lab" in result.stdout
    assert [p for p in pids.values() if procs.alive(p)] == []
    for host in running.net.hosts:  # only sshd may remain in each namespace
        assert netns.pids_in(host.namespace) == [host.sshd_pid]
    again = run_cli(["down"], running.home, timeout_s=60)
    assert again.returncode == 0 and "nothing to stop" in again.stdout
