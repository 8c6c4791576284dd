"""The agent daemon's own bookkeeping, as a real process on this machine (sim engine)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port
from worker import procs


def daemon(*args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "worker.daemon", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_start_is_idempotent_for_the_same_hash_and_restarts_on_a_new_one(tmp_path: Path) -> None:
    folder = str(tmp_path / "orchard")
    agent = ["--listen", f"127.0.0.1:{free_port()}", "--engine", "sim", "--model", "m", "--served-name", "m"]
    first = daemon("start", "--dir", folder, "--hash", "aaa", "--", *agent)
    try:
        assert first["status"] == "started" and (tmp_path / "orchard" / "agent.pid").exists()
        same = daemon("start", "--dir", folder, "--hash", "aaa", "--", *agent)
        assert same["pid"] == first["pid"] and same["changed"] is False
        other = daemon("start", "--dir", folder, "--hash", "bbb", "--", *agent)
        assert other["pid"] != first["pid"] and other["changed"] is True
        time.sleep(0.2)
        assert not procs.alive(int(str(first["pid"])))
        assert daemon("status", "--dir", folder)["status"] == "running"
    finally:
        stopped = daemon("stop", "--dir", folder)
    assert stopped["was_running"] is True
    assert daemon("status", "--dir", folder)["status"] == "stopped"
    assert daemon("stop", "--dir", folder)["was_running"] is False
