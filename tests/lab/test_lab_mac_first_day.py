"""A Mac lab's first day, walked on Mac-like hosts (tests/lab/maclike.py) as its admin would:
bare hosts → `cluster install` → `cluster up --install-service` (sudo asks for the password once, on the
terminal) → an answer → re-runs that change nothing → the hosts' services rebooted (they come back) → down.

Two hosts serve one model. Each step's time is printed (`pytest -s` shows them)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from cluster.bringup import units
from tests.conftest import free_port, run_cli, wait_until
from tests.lab import maclike, netns
from tests.lab.terminal import run_cli_on_terminal
from tests.lab.wheelhouse import wheelhouse

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
if reason := maclike.available():
    pytestmark.append(pytest.mark.skip(reason=reason))

MODELS = '[[models]]\nname = "sim-model"\nsource = "sim-model"\nreplicas = 2\n'
PLIST = f"LaunchDaemons/{units.LAUNCHD_LABEL}.plist"


@dataclass
class FirstDay:
    lab: maclike.MacLab
    home: Path
    hosts_file: Path
    port: int
    steps: dict[str, float]
    install: subprocess.CompletedProcess[str]

    def ask(self) -> str:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", max_retries=0)
        answer = client.completions.create(model="sim-model", prompt="hello", max_tokens=3)
        assert answer.usage is not None and answer.usage.completion_tokens == 3
        return answer.id

    def agent_pids(self) -> list[int]:
        return sorted(pid for mac in self.lab.hosts for pid in netns.running(mac.lab, "worker.agent"))

    def password_answers(self) -> dict[str, str]:
        [first, *_] = self.lab.hosts  # every host's admin has its own password in real labs too; here one works
        return {"sudo password for": first.password}


def timed(steps: dict[str, float], name: str, started: float) -> None:
    steps[name] = time.monotonic() - started
    print(f"\n  first day: {name}: {steps[name]:.1f} s")


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstDay]:
    root = tmp_path_factory.mktemp("macday")
    house = wheelhouse(root / "wheelhouse")
    archive = maclike.python_archive(root)
    with maclike.mac_lab(root / "lab", 2) as lab:
        for mac in lab.hosts[1:]:  # one admin password for the lab, as a lab's admin account often is
            subprocess.run(["chpasswd"], input=f"{mac.user}:{lab.hosts[0].password}\n", text=True, check=True)
        home, port, steps = root / "home", free_port(), dict[str, float]()
        hosts_file = root / "lab.toml"
        hosts_file.write_text(lab.hosts_toml(MODELS, port))
        started = time.monotonic()
        # --extras= : the sim engine only (a Mac's default, mlx, has no wheel for this machine's Linux)
        install = run_cli(
            ["install", str(hosts_file), "--wheelhouse", str(house), "--python-archive", str(archive), "--extras="],
            home,
            timeout_s=1500,
        )
        timed(steps, "cluster install (Python brought, venv, Orchard)", started)
        day = FirstDay(lab, home, hosts_file, port, steps, install)
        try:
            yield day
        finally:
            run_cli_on_terminal(["down"], home, day.password_answers(), timeout_s=300)
            print("\n  first day, step by step:\n" + "\n".join(f"    {k}: {v:.1f} s" for k, v in steps.items()))


def test_install_brings_a_python_where_the_mac_has_only_apples_39(day: FirstDay) -> None:
    assert day.install.returncode == 0, day.install.stdout + day.install.stderr
    out = day.install.stdout
    assert "no Python >= 3.11 (found: /usr/bin/python3 3.9.6); bringing one" in out, out
    for mac in day.lab.hosts:
        venv = mac.home / ".orchard" / "venv"
        config = (venv / "pyvenv.cfg").read_text()
        assert f"home = {mac.home}/.orchard/python/bin" in config  # the brought Python, in the admin's orchard_dir
        assert (venv / "bin" / "python").stat().st_uid == int(subprocess.check_output(["id", "-u", mac.user]))


def test_up_installs_launchdaemons_asking_the_sudo_password_once(day: FirstDay) -> None:
    started = time.monotonic()
    up = run_cli_on_terminal(["up", str(day.hosts_file), "--install-service"], day.home, day.password_answers())
    timed(day.steps, "cluster up --install-service (password typed once)", started)
    assert up.returncode == 0, up.output
    assert len(up.prompts) == 1, up.prompts  # two hosts, one question
    day.ask()
    for mac in day.lab.hosts:
        plist = mac.library / PLIST
        assert plist.exists() and plist.stat().st_uid == 0 and oct(plist.stat().st_mode & 0o777) == "0o644"
        [pid] = netns.running(mac.lab, "worker.agent")
        uid = next(
            line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:")
        )
        assert uid == subprocess.check_output(["id", "-u", mac.user], text=True).strip()  # UserName, not root
    secret = day.lab.hosts[0].password  # never echoed, logged, written or on a command line
    files = [p for mac in day.lab.hosts for p in (mac.home / ".orchard").rglob("*") if p.is_file()]
    files += [p for p in day.home.rglob("*") if p.is_file()] + [mac.library / PLIST for mac in day.lab.hosts]
    assert files and not any(secret.encode() in p.read_bytes() for p in files)
    assert secret not in up.output and secret not in subprocess.check_output(["ps", "-eo", "args"], text=True)


def test_rerunning_up_changes_nothing_and_asks_nothing(day: FirstDay) -> None:
    before = day.agent_pids()
    started = time.monotonic()
    plain = run_cli(["up", str(day.hosts_file)], day.home, timeout_s=300)  # no terminal: a prompt would fail it
    again = run_cli(["up", str(day.hosts_file), "--install-service"], day.home, timeout_s=300)
    timed(day.steps, "two re-runs of cluster up (nothing changed)", started)
    assert plain.returncode == 0 and again.returncode == 0, plain.stdout + again.stdout
    assert "installed as a service" not in plain.stdout + again.stdout and "drain" not in again.stdout
    assert day.agent_pids() == before and len(before) == 2  # the same agents: none reloaded, no second one
    day.ask()


def test_the_hosts_services_come_back_after_a_reboot(day: FirstDay) -> None:
    for mac in day.lab.hosts:  # power off: every process of the host but its sshd
        for pid in netns.pids_in(mac.lab.namespace):
            if pid != mac.lab.sshd_pid:
                os.kill(pid, 9)
    wait_until(lambda: not day.agent_pids(), 10, "the hosts' processes to be gone")
    started = time.monotonic()
    for mac in day.lab.hosts:
        booted = mac.on_host("/usr/bin/launchctl", "boot")  # launchd at startup: every RunAtLoad daemon
        assert booted.returncode == 0, booted.stderr
    try:
        wait_until(lambda: _answers(day), 120, "an answer after the reboot")
    except TimeoutError as exc:
        logs = "\n".join(
            f"{m.user}: {m.on_host('/usr/bin/launchctl', 'print', 'system/' + units.LAUNCHD_LABEL)}\n"
            + "".join(f"{p.name}: {p.read_text()}\n" for p in (m.library / ".launchd-standin").iterdir())
            + (m.home / ".orchard" / "logs" / "agent.log").read_text()[-1500:]
            for m in day.lab.hosts
        )
        raise AssertionError(f"{exc}\n{logs}") from None
    timed(day.steps, "reboot until the lab answers again", started)
    assert len(day.agent_pids()) == 2


def test_down_unloads_the_daemons_and_leaves_nothing_running(day: FirstDay) -> None:
    started = time.monotonic()
    down = run_cli_on_terminal(["down"], day.home, day.password_answers(), timeout_s=300)
    timed(day.steps, "cluster down", started)
    assert down.returncode == 0, down.output
    assert "agent service unloaded and removed" in down.output and len(down.prompts) == 1
    for mac in day.lab.hosts:
        assert not (mac.library / PLIST).exists()
        wait_until(lambda m=mac: netns.pids_in(m.lab.namespace) == [m.lab.sshd_pid], 40, "only sshd left")  # type: ignore[misc]


def _answers(day: FirstDay) -> bool:
    try:
        day.ask()
    except (openai.APIError, AssertionError):
        return False
    return True
