"""What an MLX shard group needs from one member host, read there (`python -m worker.daemon mlxcheck`).

The head (cluster/bringup/groupcheck.py) turns these facts into problems named per host with their fixes,
before any rank starts: a mistake would otherwise show up as engine starts failing one after another.
- the group address must be one of this host's own addresses, and the group port free (or held by the agent
  already running here);
- mlx and mlx-lm versions, equal on every member: ranks of different releases disagree on the wire or on layers;
- the macOS firewall must let the engine's interpreter accept the ring's connections;
- JACCL (RDMA over Thunderbolt): Apple's TN3205 — macOS 26.2 or later on a Mac with Thunderbolt 5, RDMA enabled
  once in macOS Recovery (`rdma_ctl enable`), after which `ibv_devices` lists the RDMA devices.
Commands run through an injectable runner, so the darwin branch is tested on fixtures in Apple's formats.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
from collections.abc import Callable

import psutil

from worker.hostinfo import firewall_state
from worker.shared.daemon import MlxCheckReply

Run = Callable[[list[str]], str]  # argv → stdout; raises OSError or CalledProcessError


def parse_ibv_devices(text: str) -> list[str]:
    """Device names from `ibv_devices` (a header, a dashed line, then `rdma_en2   <node GUID>` rows)."""
    lines = text.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip().startswith("---")), len(lines))
    return [line.split()[0] for line in lines[start:] if line.split()]


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def port_free(address: str, port: int) -> bool:
    """Whether this host could listen on address:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def local_addresses() -> list[str]:
    return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET})


def mlxcheck(
    group_address: str, group_port: int, transport: str, agent_running: bool, run: Run, platform: str = sys.platform
) -> MlxCheckReply:
    """This host's facts for an MLX group rank listening on group_address:group_port."""
    addresses = local_addresses()
    here = group_address in addresses
    reply = MlxCheckReply(
        local_addresses=addresses,
        address_local=here,
        agent_running=agent_running,
        port_free=port_free(group_address, group_port) if here else True,
        mlx_version=version_of("mlx"),
        mlx_lm_version=version_of("mlx-lm"),
        python=os.path.realpath(sys.executable),
    )
    updates: dict[str, object] = {}
    if platform == "darwin":
        updates["firewall"], updates["firewall_detail"] = firewall_state(sys.executable, run)
        if transport == "jaccl":
            updates["macos_version"] = _quiet(run, ["sw_vers", "-productVersion"]).strip()
            updates["rdma_devices"] = parse_ibv_devices(_quiet(run, ["ibv_devices"]))
    return reply.model_copy(update=updates)


def _quiet(run: Run, argv: list[str]) -> str:
    try:
        return run(argv)
    except (OSError, subprocess.SubprocessError):
        return ""
