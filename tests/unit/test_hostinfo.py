"""Host-fact parsers on recorded command output (see fixtures/README.md for the formats' sources)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from worker.hostinfo import parse_cpuinfo_model, parse_meminfo, parse_sw_vers, parse_sysctl_value

FIXTURES = Path(__file__).parent / "fixtures"


def test_sw_vers_gives_product_and_version() -> None:
    assert parse_sw_vers((FIXTURES / "sw_vers.txt").read_text()) == "macOS 15.3.1"


def test_sysctl_bare_and_named_values() -> None:
    assert parse_sysctl_value("68719476736\n") == "68719476736"  # sysctl -n hw.memsize
    assert parse_sysctl_value("hw.memsize: 206158430208\n") == "206158430208"  # sysctl hw.memsize
    assert parse_sysctl_value("machdep.cpu.brand_string: Apple M2 Ultra\n") == "Apple M2 Ultra"


def test_linux_meminfo_and_cpuinfo() -> None:
    assert parse_meminfo("MemTotal:       24682852 kB\nMemFree:  1 kB\n") == 24682852 * 1024
    assert parse_cpuinfo_model("processor\t: 0\nmodel name\t: AMD EPYC 9B14\n") == "AMD EPYC 9B14"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc/meminfo")
def test_this_machine_reads_without_error() -> None:
    text = Path("/proc/meminfo").read_text()
    assert parse_meminfo(text) > 1 << 30


def test_this_machines_facts_read_on_any_os() -> None:
    from worker.hostinfo import read_host_facts

    facts = read_host_facts()  # sysctl and sw_vers on a Mac, /proc on Linux
    assert facts.memory_bytes > 1 << 30 and facts.chip and facts.hostname


def test_metal_working_set_from_mlxs_device_info() -> None:
    from worker.hostinfo import parse_metal_working_set

    # The keys MLX documents for mlx.core.metal.device_info(); figures of a 192 GB Mac.
    info = {
        "architecture": "applegpu_g14d",
        "max_buffer_size": 154618822656,
        "max_recommended_working_set_size": 154618822656,
        "memory_size": 206158430208,
        "resource_limit": 499000,
    }
    assert parse_metal_working_set(info) == 154618822656
    assert parse_metal_working_set({"architecture": "x86_64", "device_name": "cpu"}) == 0  # MLX on CPU
