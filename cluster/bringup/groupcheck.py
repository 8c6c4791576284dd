"""Before a vLLM shard group starts: does every member have what vLLM over Ray needs (vllm-metal's
docs/distributed.md)? Pure: the members' own reports in, problems per host out, each with the fix.

- On a Mac the hostname must resolve to the member's group address: `.local` names resolve to loopback and
  gloo's rendezvous then hangs (Linux members get VLLM_HOST_IP and are not held to this).
- Ray must import in the engine's venv (vllm-metal's installer leaves it out; a missing Ray shows up as an
  engine restart loop otherwise).
- The members' Pythons must share major.minor (the ranks run with RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor)
  and their Ray versions must match.
- The macOS firewall must let the engine's interpreter accept connections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cluster.placement.hostsfile import HostSpec
from cluster.placement.plan import GroupPlan
from proto.daemon import GroupCheckReply
from worker.hostinfo import SOCKETFILTERFW


@dataclass(frozen=True)
class Member:
    host: HostSpec
    platform: str  # "darwin" | "linux"
    report: GroupCheckReply


def problems(group: GroupPlan, members: Mapping[str, Member]) -> dict[str, list[str]]:
    """Per member label, what stops the group (empty lists are left out)."""
    found: dict[str, list[str]] = {}
    for label in group.hosts:
        member = members[label]
        found[label] = _own(member)
    for label, issue in _mismatches(group, members):
        found[label].append(issue)
    return {label: issues for label, issues in found.items() if issues}


def _own(member: Member) -> list[str]:
    report, host, python = member.report, member.host, member.report.engine_python
    issues = []
    address = host.group_address or host.address
    group_ips = set(report.group_addresses or [address])  # a name resolved on the member itself
    if member.platform == "darwin" and not group_ips & set(report.hostname_addresses):
        resolved = ", ".join(report.hostname_addresses) or "nothing"
        issues.append(f"hostname '{report.hostname}' resolves to {resolved}, not its group address {address}: add "
                      f"'{address} {report.hostname}' to /etc/hosts (gloo hangs at rendezvous otherwise)")  # fmt: skip
    if not report.python_version:
        issues.append(f"the engine's interpreter {python} does not run (set engine_python for this host)")
    elif not report.ray_version:
        issues.append(f"Ray is not installed in the engine's venv: run `{python} -m pip install ray`, or "
                      "`cluster install --with-vllm-metal`")  # fmt: skip
    if report.firewall in ("blocks", "unlisted"):
        what = "blocks" if report.firewall == "blocks" else "has no rule for"
        issues.append(f"the macOS firewall {what} the engine's interpreter ({report.firewall_detail}): "
                      f"`sudo {SOCKETFILTERFW} --add {python} --unblockapp {python}` (its real path), or turn "
                      "the firewall off")  # fmt: skip
    return issues


def _mismatches(group: GroupPlan, members: Mapping[str, Member]) -> list[tuple[str, str]]:
    reports = {label: members[label].report for label in group.hosts}
    issues: list[tuple[str, str]] = []
    for what, value in (("Python", lambda r: ".".join(r.python_version.split(".")[:2])),
                        ("Ray", lambda r: r.ray_version)):  # fmt: skip
        seen = {label: value(r) for label, r in reports.items() if r.python_version and r.ray_version}
        if len(set(seen.values())) > 1:
            listing = ", ".join(f"{label} {v}" for label, v in seen.items())
            issues += [(label, f"{what} versions differ across group {group.name} ({listing}): Ray needs them equal")
                       for label in seen]  # fmt: skip
    return issues
