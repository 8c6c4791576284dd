"""A host whose sshd is down is reported with the reason; the others serve (or, with --require-all, fail)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, run_cli
from tests.lab import netns

pytestmark = [pytest.mark.slow]
if reason := netns.available():
    pytestmark.append(pytest.mark.skip(reason=reason))

MODELS = """
[[models]]
name = "sim-model"
source = "sim-model"
replicas = 3
"""


def test_unreachable_host_is_reported_and_the_rest_serve(tmp_path: Path) -> None:
    with netns.lab(tmp_path / "net", 3) as net:
        net.hosts[2].stop_sshd()
        port = free_port()
        hosts_file = tmp_path / "lab.toml"
        hosts_file.write_text(net.hosts_toml(sys.executable, ["sim"] * 3, MODELS, port))
        home = tmp_path / "home"
        try:  # `down` whatever `up` did: nothing outlives the test
            strict = run_cli(["up", "--require-all", str(hosts_file)], home, timeout_s=300)
            assert strict.returncode == 1
            assert "--require-all: h3: unreachable over SSH (10.213.7.13:22)" in strict.stderr
            for host in net.hosts[:2]:  # what the failed run started, it stopped again
                assert netns.pids_in(host.namespace) == [host.sshd_pid]
            result = run_cli(["up", str(hosts_file)], home, timeout_s=300)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "h3: unreachable over SSH" in result.stdout
            assert "2 of 3 hosts serving" in result.stdout
            ok = httpx.post(
                f"http://127.0.0.1:{port}/v1/completions",
                json={"model": "sim-model", "prompt": "hi", "max_tokens": 2},
                timeout=30,
            )
            assert ok.status_code == 200 and ok.headers["x-orchard-worker"] in ("h1", "h2")
        finally:
            run_cli(["down"], home, timeout_s=120)
        for host in net.hosts[:2]:
            assert netns.pids_in(host.namespace) == [host.sshd_pid]
