"""Host facts for Info: chip, memory, OS. Read from the OS; the parsers are pure and tested on fixtures."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from worker.shared.macos import SOCKETFILTERFW


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    os: str
    chip: str
    memory_bytes: int
    usable_memory_bytes: int = 0  # Metal's recommended working set on a Mac (0: not reported)


def parse_meminfo(text: str) -> int:
    """Bytes of MemTotal from Linux /proc/meminfo (`MemTotal:  24682852 kB`)."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) * (1024 if len(parts) > 2 and parts[2].lower() == "kb" else 1)
    raise ValueError("no MemTotal line in /proc/meminfo")


def parse_cpuinfo_model(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def parse_sysctl_value(text: str) -> str:
    """`sysctl -n KEY` prints the bare value; `sysctl KEY` prints `KEY: value`. Accept both."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.split(": ", 1)[1].strip() if ": " in line else line.strip()


def parse_sw_vers(text: str) -> str:
    """`sw_vers` prints `ProductName:\tmacOS` / `ProductVersion:\t15.3.1` / `BuildVersion:\t24D70`."""
    fields = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    return f"{fields.get('ProductName', 'macOS')} {fields.get('ProductVersion', '?')}".strip()


def parse_metal_working_set(info: Mapping[str, object]) -> int:
    """Bytes from MLX's `device_info()` (keys: architecture, max_buffer_size, max_recommended_working_set_size,
    memory_size, resource_limit): what Metal recommends a process keeps resident, about 3/4 of RAM on large
    Macs. 0 when the key is missing (MLX on CPU reports only architecture and device_name)."""
    value = info.get("max_recommended_working_set_size")
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


def read_metal_working_set() -> int:
    try:
        import mlx.core as mx  # on a Mac the agent's venv has MLX (the `mlx` extra)

        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    except Exception:  # no MLX, or Metal cannot answer: the figure is optional, the host facts are not
        return 0
    return parse_metal_working_set(info)


def parse_firewall(global_state: str, app_state: str) -> tuple[str, str]:
    """macOS Application Firewall, from `socketfilterfw --getglobalstate` ("Firewall is enabled. (State = 1)",
    "(State = 2)" when it blocks all incoming connections, "Firewall is disabled. (State = 0)") and
    `--getappblocked PATH` ("… is permitted" / "… is blocked" / "… is not part of the firewall"):
    ("off" | "allows" | "blocks" | "unlisted" | "unknown", what it said)."""
    said = " ".join(f"{global_state.strip()} {app_state.strip()}".split())
    app = app_state.lower()
    if "State = 0" in global_state or "disabled" in global_state.lower():
        return "off", said
    if "State = " not in global_state and "enabled" not in global_state.lower():
        return "unknown", said
    if "State = 2" in global_state or "blocked" in app:
        return "blocks", said
    if "permitted" in app:
        return "allows", said
    return "unlisted", said


def firewall_state(python: str, run: Callable[[list[str]], str]) -> tuple[str, str]:
    """The macOS firewall towards this interpreter (its real path: the rules name it, not a venv's link), asked
    through `run` (argv → stdout): parse_firewall's answer, or ("unknown", why) when it cannot be asked."""
    try:
        state = run([SOCKETFILTERFW, "--getglobalstate"])
        app = run([SOCKETFILTERFW, "--getappblocked", os.path.realpath(python)]) if "State = 0" not in state else ""
    except (OSError, subprocess.SubprocessError) as exc:
        return "unknown", str(exc)
    return parse_firewall(state, app)


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=5, check=True).stdout


def read_host_facts() -> HostFacts:
    """Blocking (reads files or runs sysctl): call through asyncio.to_thread from async code."""
    hostname = socket.gethostname()
    if sys.platform == "darwin":
        return HostFacts(
            hostname=hostname,
            os=parse_sw_vers(_run(["sw_vers"])),
            chip=parse_sysctl_value(_run(["sysctl", "-n", "machdep.cpu.brand_string"])),
            memory_bytes=int(parse_sysctl_value(_run(["sysctl", "-n", "hw.memsize"]))),
            usable_memory_bytes=read_metal_working_set(),
        )
    return HostFacts(
        hostname=hostname,
        os=f"{platform.system()} {platform.release()}",
        chip=parse_cpuinfo_model(Path("/proc/cpuinfo").read_text()),
        memory_bytes=parse_meminfo(Path("/proc/meminfo").read_text()),
    )
