"""Host facts for Info: chip, memory, OS. Read from the OS; the parsers are pure and tested on fixtures."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    os: str
    chip: str
    memory_bytes: int


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
        )
    return HostFacts(
        hostname=hostname,
        os=f"{platform.system()} {platform.release()}",
        chip=parse_cpuinfo_model(Path("/proc/cpuinfo").read_text()),
        memory_bytes=parse_meminfo(Path("/proc/meminfo").read_text()),
    )
