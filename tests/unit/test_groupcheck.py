"""Preflight for vLLM groups over Ray: each member's own report in, each problem named per host with its fix.

The darwin reports come from `worker.daemon.groupcheck` run with an injected command runner that answers as
Apple's socketfilterfw(8) does ("Firewall is enabled. (State = 1)", "… is permitted" / "… is blocked")."""

from __future__ import annotations

import os
import subprocess

import pytest

from cluster.bringup.groupcheck import Member, problems
from cluster.placement.hostsfile import HostSpec
from cluster.placement.plan import GroupPlan
from worker import daemon
from worker.hostinfo import parse_firewall
from worker.shared.daemon import GroupCheckReply

GROUP = GroupPlan(
    model="big", index=0, mode="pipeline", backend="vllm", transport="ring", hosts=("s1", "s2"), shares=(0.5, 0.5)
)
ENGINE = "/Users/lab/.venv-vllm-metal/bin/python"


def report(
    hostname: str,
    addresses: list[str],
    python: str = "3.12.8",
    ray: str = "2.49.0",
    firewall: str = "off",
    group: list[str] | None = None,
) -> GroupCheckReply:
    return GroupCheckReply(
        hostname=hostname,
        hostname_addresses=addresses,
        engine_python=ENGINE,
        python_version=python,
        ray_version=ray,
        firewall=firewall,
        group_addresses=group or [],
    )


def members(r1: GroupCheckReply, r2: GroupCheckReply, platform: str = "darwin") -> dict[str, Member]:
    return {
        "s1": Member(HostSpec(address="10.0.0.2", name="s1", group_address="10.0.5.2"), platform, r1),
        "s2": Member(HostSpec(address="10.0.0.3", name="s2"), platform, r2),
    }


def test_a_ready_group_has_no_problems() -> None:
    assert problems(GROUP, members(report("s1", ["10.0.5.2"]), report("s2", ["10.0.0.3"]))) == {}


def test_a_local_name_resolving_to_loopback_is_named_with_the_fix() -> None:
    found = problems(GROUP, members(report("s1.local", ["127.0.0.1"]), report("s2", ["10.0.0.3"])))
    [issue] = found["s1"]
    assert "resolves to 127.0.0.1, not its group address 10.0.5.2" in issue and "'10.0.5.2 s1.local'" in issue
    assert "s2" not in found
    by_name = members(report("s1", ["10.0.5.2"]), report("s2", ["10.0.0.3"], group=["10.0.0.3"]))
    by_name["s2"] = Member(HostSpec(address="s2.lab.example", name="s2"), "darwin", by_name["s2"].report)
    assert problems(GROUP, by_name) == {}  # a group address given as a name: resolved on the member
    linux = problems(GROUP, members(report("s1", ["127.0.0.1"]), report("s2", ["127.0.0.1"]), platform="linux"))
    assert linux == {}  # Linux members get VLLM_HOST_IP; the rule is vllm-metal's, for Macs


def test_missing_ray_and_differing_pythons_are_named_per_host() -> None:
    found = problems(GROUP, members(report("s1", ["10.0.5.2"], ray=""), report("s2", ["10.0.0.3"], python="")))
    assert "Ray is not installed in the engine's venv" in found["s1"][0] and "--with-vllm-metal" in found["s1"][0]
    assert "does not run" in found["s2"][0]
    skew = problems(
        GROUP, members(report("s1", ["10.0.5.2"], python="3.12.8"), report("s2", ["10.0.0.3"], python="3.11.9"))
    )
    assert all("Python versions differ across group big#1 (s1 3.12, s2 3.11)" in v[0] for v in skew.values())
    patch_only = problems(
        GROUP, members(report("s1", ["10.0.5.2"], python="3.12.8"), report("s2", ["10.0.0.3"], python="3.12.4"))
    )
    assert patch_only == {}  # RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor


def test_a_blocking_firewall_is_named_with_the_command_that_opens_it() -> None:
    found = problems(
        GROUP, members(report("s1", ["10.0.5.2"], firewall="blocks"), report("s2", ["10.0.0.3"], firewall="unlisted"))
    )
    assert f"socketfilterfw --add {ENGINE} --unblockapp {ENGINE}" in found["s1"][0] and "blocks" in found["s1"][0]
    assert "has no rule for" in found["s2"][0]


@pytest.mark.parametrize(
    ("state", "app", "verdict"),
    [
        ("Firewall is disabled. (State = 0)\n", "", "off"),
        ("Firewall is enabled. (State = 1)\n", f"The application {ENGINE} is permitted\n", "allows"),
        ("Firewall is enabled. (State = 1)\n", f"The application {ENGINE} is blocked\n", "blocks"),
        ("Firewall is enabled. (State = 2)\n", f"The application {ENGINE} is permitted\n", "blocks"),  # block all
        ("Firewall is enabled. (State = 1)\n", f"The application {ENGINE} is not part of the firewall\n", "unlisted"),
        ("socketfilterfw: unrecognized\n", "", "unknown"),
    ],
)
def test_the_firewall_as_socketfilterfw_reports_it(state: str, app: str, verdict: str) -> None:
    assert parse_firewall(state, app)[0] == verdict


def test_the_daemons_darwin_check_asks_the_engine_venv_and_the_firewall() -> None:
    asked: list[list[str]] = []

    def run(argv: list[str]) -> str:
        asked.append(argv)
        if argv[-1] == "import ray; print(ray.__version__)":
            raise subprocess.CalledProcessError(1, argv)  # vllm-metal's installer left Ray out
        if argv[-1].startswith("import platform"):
            return "3.12.8\n"
        return "Firewall is enabled. (State = 1)\n" if argv[1] == "--getglobalstate" else f"{ENGINE} is blocked\n"

    reply = daemon.groupcheck(None, "127.0.0.1", run=run, platform="darwin")
    assert reply.engine_python.endswith("/.venv-vllm-metal/bin/python")  # vllm-metal's default venv
    assert (reply.python_version, reply.ray_version, reply.firewall) == ("3.12.8", "", "blocks")
    assert reply.group_addresses == ["127.0.0.1"]
    real = os.path.realpath(reply.engine_python)  # the firewall's rules name the real interpreter
    assert asked[-1] == ["/usr/libexec/ApplicationFirewall/socketfilterfw", "--getappblocked", real]
