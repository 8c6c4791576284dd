"""A model's files arrive in a phase of their own: progress in the engine's detail, and the ready deadline
counted only from when they are there (a first 70B download outlasts any ready timeout). The hub is out of
reach here, so the fetch is a stand-in that takes its time; the engine is a real sim process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.engines.base import EngineConfig
from worker.engines.sim import SimEngine
from worker.shared import download
from worker.shared.states import EngineState
from worker.supervisor import EngineSupervisor, SupervisorPolicy


async def test_a_fetch_longer_than_the_ready_timeout_still_ends_ready_with_progress_shown(tmp_path: Path) -> None:
    seen: list[str] = []

    async def slow_fetch(report: download.Report) -> None:
        for done in range(0, 5):
            report(download.progress("org/big", done * 10**9, 4 * 10**9))
            await asyncio.sleep(1.0)

    policy = SupervisorPolicy(ready_timeout_s=3.0)
    supervisor = EngineSupervisor(SimEngine(), EngineConfig("sim", "m", "m"), tmp_path, policy, fetch=slow_fetch)
    await supervisor.start()
    try:
        for _ in range(200):
            seen.append(f"{supervisor.state.value}: {supervisor.detail}")
            if supervisor.ready:
                break
            await asyncio.sleep(0.1)
        assert supervisor.ready, seen[-5:]
        assert supervisor.restarts == 0  # the fetch took 5 s against a 3 s ready timeout: not a failed start
        assert "starting: downloading org/big: 2.00 of 4.00 GB (50%)" in seen
    finally:
        await supervisor.stop()


async def test_a_failed_fetch_is_a_failed_start_with_the_reason(tmp_path: Path) -> None:
    async def offline(report: download.Report) -> None:
        raise OSError("cannot reach the hub")

    policy = SupervisorPolicy(max_failed_starts=1)
    supervisor = EngineSupervisor(SimEngine(), EngineConfig("sim", "m", "m"), tmp_path, policy, fetch=offline)
    await supervisor.start()
    try:
        for _ in range(100):
            if supervisor.state is EngineState.FAILED:
                break
            await asyncio.sleep(0.05)
        assert supervisor.state is EngineState.FAILED
        assert "the model's download failed: OSError: cannot reach the hub" in supervisor.detail
    finally:
        await supervisor.stop()


def test_only_hub_models_are_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert download.hub_fetch("/models/local") is None and download.hub_fetch("smollm2-135m-instruct") is None
    assert download.hub_fetch("org/model") is not None  # also when cached: a partial copy is completed


def test_offline_a_cached_copy_serves_as_it_is_and_none_is_a_failed_fetch(tmp_path: Path) -> None:
    """huggingface_hub's own offline mode (HF_HUB_OFFLINE, read when it is imported: a fresh process)."""
    script = (
        "import asyncio, sys\n"
        "from worker.shared import download\n"
        "lines = []\n"
        "try:\n"
        "    asyncio.run(download.download(sys.argv[1], lines.append))\n"
        "except Exception as exc:\n"
        "    print('failed:', type(exc).__name__)\n"
        "print(lines)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    snapshot = tmp_path / "models--org--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    cached = subprocess.run(
        [sys.executable, "-c", script, "org/cached"], capture_output=True, text=True, env=env, timeout=120
    )
    assert "hub not reachable: org/cached as cached" in cached.stdout, cached.stdout + cached.stderr
    missing = subprocess.run(
        [sys.executable, "-c", script, "org/missing"], capture_output=True, text=True, env=env, timeout=120
    )
    assert "failed:" in missing.stdout, missing.stdout + missing.stderr
