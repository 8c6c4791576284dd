"""Run the agent detached on a host, with a pidfile, logs and the hash of its configuration.

Called by `cluster up/down/status/logs` over SSH, one JSON line out:

    python -m worker.daemon start  --dir ~/.orchard --hash H -- --listen 0.0.0.0:50051 --engine vllm ...
    python -m worker.daemon stop   --dir ~/.orchard
    python -m worker.daemon status --dir ~/.orchard
    python -m worker.daemon facts                     # host facts for preflight

`start` with the same hash while the agent runs changes nothing; with another hash it restarts the agent.
The agent survives the SSH session closing (own session, stdin from /dev/null, output to logs/agent.log).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from worker.hostinfo import read_host_facts


def _pid(folder: Path) -> int | None:
    try:
        pid = int((folder / "agent.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid if not _is_zombie(pid) else None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False  # no /proc (macOS): kill(0) is the answer


def status(folder: Path) -> dict[str, object]:
    pid = _pid(folder)
    applied = (folder / "agent.hash").read_text().strip() if (folder / "agent.hash").exists() else ""
    return {"status": "running" if pid else "stopped", "pid": pid, "hash": applied if pid else ""}


def stop(folder: Path, grace_s: float = 30.0) -> dict[str, object]:
    pid = _pid(folder)
    if pid is None:
        (folder / "agent.pid").unlink(missing_ok=True)
        return {"status": "stopped", "pid": None, "was_running": False}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)  # the agent stops its engine, then exits
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _pid(folder) is not None:
        time.sleep(0.1)
    if _pid(folder) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    (folder / "agent.pid").unlink(missing_ok=True)
    return {"status": "stopped", "pid": pid, "was_running": True}


def start(folder: Path, config_hash: str, agent_args: list[str]) -> dict[str, object]:
    current = status(folder)
    if current["status"] == "running" and current["hash"] == config_hash:
        return {**current, "status": "running", "changed": False}
    if current["status"] == "running":
        stop(folder)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    with open(folder / "logs" / "agent.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.agent", "--log-dir", str(folder / "logs"), *agent_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the SSH session; stop() signals its whole group
            cwd=folder,
        )
    (folder / "agent.pid").write_text(f"{proc.pid}\n")
    (folder / "agent.hash").write_text(f"{config_hash}\n")
    time.sleep(0.5)
    if proc.poll() is not None:
        tail = (folder / "logs" / "agent.log").read_text(errors="replace").splitlines()[-10:]
        return {"status": "failed", "pid": None, "changed": True, "log": "\n".join(tail)}
    return {"status": "started", "pid": proc.pid, "hash": config_hash, "changed": True}


def facts() -> dict[str, object]:
    host = read_host_facts()
    engines = {"sim": True, "vllm": _vllm_available(), "mlx": importlib.util.find_spec("mlx_lm") is not None}
    return {**asdict(host), "python": sys.executable, "platform": sys.platform, "engines": engines}


def _vllm_available() -> bool:
    if sys.platform == "darwin":
        return (Path("~/.venv-vllm-metal/bin/python").expanduser()).exists()
    return importlib.util.find_spec("vllm") is not None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.daemon")
    parser.add_argument("action", choices=("start", "stop", "status", "facts"))
    parser.add_argument("--dir", type=Path, default=Path("~/.orchard"))
    parser.add_argument("--hash", default="")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])  # what follows `--` belongs to the agent, untouched
    agent_args = argv[split + 1 :]
    folder = args.dir.expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    if args.action == "facts":
        result = facts()
    elif args.action == "start":
        result = start(folder, args.hash, agent_args)
    elif args.action == "stop":
        result = stop(folder)
    else:
        result = status(folder)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
