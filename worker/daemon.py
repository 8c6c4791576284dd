"""Run the agent detached on a host, with a pidfile, logs and the hash of its configuration.

Called by `cluster up/down/status/logs` over SSH; one JSON line out, typed by worker/shared/daemon.py:

    python -m worker.daemon start  --dir ~/.orchard --hash H -- --listen 0.0.0.0:50051 --engine vllm ...
    python -m worker.daemon stop   --dir ~/.orchard
    python -m worker.daemon status --dir ~/.orchard
    python -m worker.daemon run    --dir ~/.orchard --hash H --service launchd -- ...   # a service's program
    python -m worker.daemon facts                     # host facts for preflight
    python -m worker.daemon models --dir ~/.orchard   # the model store on this host
    python -m worker.daemon groupcheck                # what a vLLM group over Ray needs from this host
    python -m worker.daemon mlxcheck --group-address IP --group-port P [--transport jaccl]   # an MLX group

`start` with the same hash while the agent runs changes nothing; with another hash it restarts the agent.
The agent survives the SSH session closing (own session, stdin from /dev/null, output to logs/agent.log).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from worker import keeper
from worker.engines.base import EngineConfig
from worker.engines.vllm import VllmEngine
from worker.hostinfo import firewall_state, read_host_facts
from worker.mlxcheck import mlxcheck
from worker.shared import build, modelfiles, procs
from worker.shared.daemon import (
    SERVICE_MARK,
    AgentStatus,
    GroupCheckReply,
    HeldModel,
    HostFactsReply,
    ModelsReply,
    StartReply,
    StopReply,
)
from worker.shared.launch import AGENT_MODULE, AgentConfig, LaunchConfigError
from worker.shared.store.folder import META, ModelFolder


def _pid(folder: Path) -> int | None:
    """The running agent this folder records, if that pid is still it (started then, running the agent)."""
    try:
        pid = int((folder / "agent.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        started: float | None = float((folder / "agent.started").read_text().strip())
    except (OSError, ValueError):
        started = None  # recorded by an older Orchard
    return pid if procs.ours(pid, started, AGENT_MODULE) else None


def _recorded(folder: Path, name: str) -> str:
    return (folder / name).read_text().strip() if (folder / name).exists() else ""


def status(folder: Path) -> AgentStatus:
    """Running or not; and whether a service manager keeps this host's agent (recorded by `run`, kept while the
    service is installed, also when its agent is down: a plain `start` must not add one beside it)."""
    pid = _pid(folder)
    service = _recorded(folder, SERVICE_MARK)
    if pid is None:
        return AgentStatus(status="stopped", service=service)
    return AgentStatus(status="running", pid=pid, hash=_recorded(folder, "agent.hash"), service=service)


def stop(folder: Path, grace_s: float = 30.0) -> StopReply:
    pid = _pid(folder)
    if pid is not None:
        procs.terminate_tree(pid, grace_s)  # the agent stops its engine, then exits; then its group goes
    for name in ("agent.pid", "agent.started"):
        (folder / name).unlink(missing_ok=True)
    return StopReply(pid=pid, was_running=pid is not None)


def _record(folder: Path, pid: int, config_hash: str, service: str = "") -> None:
    (folder / "agent.pid").write_text(f"{pid}\n")
    (folder / "agent.started").write_text(f"{procs.started_at(pid) or 0.0!r}\n")
    (folder / "agent.hash").write_text(f"{config_hash}\n")
    if service:
        (folder / SERVICE_MARK).write_text(f"{service}\n")


def run(folder: Path, config_hash: str, config: AgentConfig, service: str) -> None:
    """A service manager's program (launchd, systemd): the agent recorded like a detached one (pid, start time,
    configuration hash), so that re-runs compare hashes and leave it alone, and a plain `start` never adds a
    second agent on its port; then this process becomes the agent (exec keeps the pid)."""
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    _record(folder, os.getpid(), config_hash, service)
    argv = config.command()
    os.execv(argv[0], argv)


def start(folder: Path, config_hash: str, config: AgentConfig) -> StartReply:
    current = status(folder)
    if current.status == "running" and current.hash == config_hash:
        return StartReply(status="running", pid=current.pid, hash=config_hash, changed=False)
    if current.service:  # its service manager would start it again beside ours (and at every boot)
        return StartReply(
            status="failed",
            changed=False,
            log=f"this host's agent is a {current.service} service: "
            "`cluster up --install-service` updates it, `cluster down` removes it",
        )
    if current.status == "running":
        stop(folder)
    logs = folder / "logs"
    config = config.model_copy(update={"log_dir": str(logs)})
    # Its own session: it survives the SSH session; stop() signals its whole group. The keeper restarts an
    # agent that dies (hosts with the agent as a launchd/systemd service have their service manager for that).
    argv = procs.kept("agent", config.command())
    pid = procs.spawn(argv, logs / "agent.log", tied_to_parent=False, cwd=folder)
    _record(folder, pid, config_hash)
    deadline = time.monotonic() + keeper.STARTUP_S + 2.0  # the keeper reports a start that fails by exiting
    while time.monotonic() < deadline and procs.alive(pid):
        time.sleep(0.1)
    if not procs.alive(pid):
        return StartReply(status="failed", changed=True, log=procs.tail(logs / "agent.log", 10))
    return StartReply(status="started", pid=pid, hash=config_hash, changed=True)


def facts(engine_python: str | None = None, models: list[str] | None = None) -> HostFactsReply:
    """This host's facts, and those of each model source's files here (`models`)."""
    host = read_host_facts()
    engines = {
        "sim": True,
        "vllm": _vllm_available(engine_python),
        "mlx": importlib.util.find_spec("mlx_lm") is not None,
    }
    found = {source: modelfiles.facts_for(source) for source in models or ()}
    return HostFactsReply(
        **asdict(host),
        python=sys.executable,
        platform=sys.platform,
        engines=engines,
        orchard_version=build.version(),
        build=build.digest(),
        models=found,
    )


def groupcheck(
    engine_python: str | None,
    group_address: str | None = None,
    run: Callable[[list[str]], str] | None = None,
    platform: str = sys.platform,
) -> GroupCheckReply:
    """What a vLLM group over Ray needs from this host; `run` (argv → stdout, raising OSError or
    CalledProcessError) is injectable so the darwin branch is tested on fixtures."""
    run = run or _output
    python = _engine_interpreter(engine_python, platform)
    hostname = socket.gethostname()
    reply: dict[str, Any] = {
        "hostname": hostname,
        "hostname_addresses": _resolve(hostname),
        "engine_python": python,
        "group_addresses": _resolve(group_address) if group_address else [],
    }
    for key, code in (
        ("python_version", "import platform; print(platform.python_version())"),
        ("ray_version", "import ray; print(ray.__version__)"),
    ):
        try:
            reply[key] = run([python, "-c", code]).strip()
        except (OSError, subprocess.SubprocessError):
            reply[key] = ""
    if platform == "darwin":
        reply["firewall"], reply["firewall_detail"] = firewall_state(python, run)
    return GroupCheckReply(**reply)


def _resolve(name: str) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(name, None, socket.AF_INET)})
    except OSError:
        return []


def _output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout


def _vllm_available(engine_python: str | None) -> bool:
    """vLLM runs from the interpreter the vllm engine would use: the host's engine_python, vllm-metal's venv on
    a Mac, else this one (where it must import)."""
    if engine_python or sys.platform == "darwin":
        return Path(_engine_interpreter(engine_python, sys.platform)).exists()
    return importlib.util.find_spec("vllm") is not None


def _engine_interpreter(engine_python: str | None, platform: str) -> str:
    return VllmEngine(platform).python(EngineConfig(kind="vllm", model="", served_name="", python=engine_python))


def held_models(root: Path) -> ModelsReply:
    """The models in this host's store, each file's check read from its record (nothing hashed)."""
    held = []
    for path in sorted(root.glob(f"*/*/{META}/manifest.json")):
        folder = ModelFolder(path.parent.parent)
        manifest = folder.manifest()
        if manifest is None:
            continue
        verified = [f for f in manifest.files if folder.verified(f, rehash=False)]
        held.append(
            HeldModel(
                source=manifest.source,
                revision=manifest.revision,
                files=len(manifest.files),
                verified=len(verified),
                size=manifest.size,
                held=folder.size_on_disk(),
                folder=str(folder.path),
            )
        )
    return ModelsReply(models=held)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.daemon")
    parser.add_argument(
        "action", choices=("start", "run", "stop", "status", "facts", "groupcheck", "mlxcheck", "models")
    )
    parser.add_argument("--dir", type=Path, default=Path("~/.orchard"))
    parser.add_argument("--hash", default="")
    parser.add_argument("--service", choices=("launchd", "systemd"), default="launchd", help="run: its manager")
    parser.add_argument("--engine-python", help="facts, groupcheck: the vLLM engine's interpreter on this host")
    parser.add_argument("--group-address", help="groupcheck, mlxcheck: this member's group address")
    parser.add_argument("--group-port", type=int, default=52100, help="mlxcheck: this member's group port")
    parser.add_argument("--transport", choices=("ring", "jaccl"), default="ring", help="mlxcheck: the group's")
    parser.add_argument("--model", action="append", default=[], help="facts: a model source to read here (repeat)")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])  # what follows `--` belongs to the agent, untouched
    agent_args = argv[split + 1 :]
    folder = args.dir.expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    result: BaseModel
    if args.action == "facts":
        result = facts(args.engine_python, args.model)
    elif args.action == "models":
        result = held_models(folder / "models")
    elif args.action == "groupcheck":
        result = groupcheck(args.engine_python, args.group_address)
    elif args.action == "mlxcheck":
        running = status(folder).status == "running"
        result = mlxcheck(args.group_address or "", args.group_port, args.transport, running, _output)
    elif args.action in ("start", "run"):
        try:
            config = AgentConfig.from_argv(agent_args)
        except LaunchConfigError as exc:
            parser.error(f"agent arguments after --: {exc}")
        if args.action == "run":
            run(folder, args.hash, config, args.service)  # does not return: becomes the agent
        result = start(folder, args.hash, config)
    elif args.action == "stop":
        result = stop(folder)
    else:
        result = status(folder)
    print(result.model_dump_json())


if __name__ == "__main__":
    main()
