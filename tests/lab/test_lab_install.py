"""`cluster install` on a real SSH host (a network namespace with its own sshd), offline from a wheelhouse.

The host starts with no Orchard at all: install finds a Python, makes the venv, copies the head's wheel and the
wheelhouse over SFTP and installs; a re-run changes nothing; `cluster up` then runs the host on the recorded
interpreter; a host whose installed code differs from the head's is refused with the way out.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from cluster.bringup import install
from tests.conftest import free_port, run_cli
from tests.lab import netns
from tests.lab.wheelhouse import wheelhouse as fetch_wheelhouse

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
if reason := netns.available():
    pytestmark.append(pytest.mark.skip(reason=reason))

MODELS = '[[models]]\nname = "sim-model"\nsource = "sim-model"\nhosts = ["h1"]\n'


@dataclass
class Installed:
    net: netns.Lab
    home: Path
    hosts_file: Path
    wheelhouse: Path
    first: subprocess.CompletedProcess[str]
    port: int

    @property
    def venv_python(self) -> Path:
        return self.net.hosts[0].orchard_dir / "venv" / "bin" / "python"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("installlab")
    wheelhouse = fetch_wheelhouse(root / "wheelhouse")
    with netns.lab(root / "net", 1) as net:
        home, port = root / "home", free_port()
        hosts_file = root / "lab.toml"
        text = net.hosts_toml("unused", ["sim"], MODELS, port)
        hosts_file.write_text("\n".join(line for line in text.splitlines() if not line.startswith("python =")))
        first = run_cli(["install", str(hosts_file), "--wheelhouse", str(wheelhouse)], home, timeout_s=1200)
        try:
            yield Installed(net, home, hosts_file, wheelhouse, first, port)
        finally:
            run_cli(["down"], home, timeout_s=180)


def test_a_bare_host_gets_a_venv_with_the_heads_build(installed: Installed) -> None:
    assert installed.first.returncode == 0, installed.first.stdout + installed.first.stderr
    assert "installed" in installed.first.stdout and "sim" in installed.first.stdout
    facts = subprocess.run(
        [str(installed.venv_python), "-m", "worker.daemon", "facts"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert json.loads(facts.stdout)["build"] == install.build.digest()
    record = json.loads((installed.home / "installed.json").read_text())["hosts"]["h1"]
    assert record["python"] == str(installed.venv_python) and record["build"] == install.build.digest()


def test_installing_again_changes_nothing(installed: Installed) -> None:
    before = installed.venv_python.resolve().stat().st_mtime
    again = run_cli(
        ["install", str(installed.hosts_file), "--wheelhouse", str(installed.wheelhouse)], installed.home, timeout_s=600
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "unchanged" in again.stdout and "pip install" not in again.stdout
    assert installed.venv_python.resolve().stat().st_mtime == before


def test_up_runs_the_host_on_the_installed_interpreter(installed: Installed) -> None:
    up = run_cli(["up", str(installed.hosts_file)], installed.home, timeout_s=600)
    assert up.returncode == 0, up.stdout + up.stderr
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{installed.port}/v1", api_key="unused", max_retries=0)
    answer = client.completions.create(model="sim-model", prompt="hello", max_tokens=3)
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    pid = int((installed.net.hosts[0].orchard_dir / "agent.pid").read_text())
    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert argv0 == str(installed.venv_python)  # the venv's interpreter, not the head's
    assert run_cli(["down"], installed.home, timeout_s=180).returncode == 0


def test_a_host_running_other_code_is_refused_with_the_way_out(installed: Installed) -> None:
    [init] = installed.venv_python.parent.parent.glob("lib/python3*/site-packages/worker/__init__.py")
    original = init.read_text()
    init.write_text(original + "# edited by hand on the host\n")
    try:
        up = run_cli(["up", str(installed.hosts_file)], installed.home, timeout_s=600)
        assert up.returncode != 0
        assert "not this head's" in up.stdout and "run `cluster install`" in up.stdout
    finally:
        init.write_text(original)
        run_cli(["down"], installed.home, timeout_s=180)


def test_a_hosts_file_python_is_where_install_goes_and_must_exist(installed: Installed, tmp_path: Path) -> None:
    named = tmp_path / "named.toml"
    text = installed.hosts_file.read_text().replace("orchard_dir =", 'python = "/nope/bin/python"\norchard_dir =')
    named.write_text(text)
    result = run_cli(["install", str(named), "--wheelhouse", str(installed.wheelhouse)], installed.home, timeout_s=300)
    assert result.returncode == 1 and "python = '/nope/bin/python' is not there" in result.stdout
    named.write_text(text.replace("/nope/bin/python", str(installed.venv_python)))  # the venv install made
    again = run_cli(["install", str(named), "--wheelhouse", str(installed.wheelhouse)], installed.home, timeout_s=300)
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout
