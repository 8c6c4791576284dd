"""Before a shard group starts: does every member have what it needs? Pure: the members' own reports in,
problems per host out, each with the fix.

MLX groups (worker/mlxcheck.py gathers the facts): the group address is the host's own and its port free; mlx
and mlx-lm are installed and the same release on every member; the model's files are on every rank; the macOS
firewall lets the engine's interpreter in; JACCL has macOS 26.2+ and RDMA devices (Apple TN3205).

vLLM groups over Ray (vllm-metal's docs/distributed.md):

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
from worker.shared.daemon import GroupCheckReply, MlxCheckReply, ModelFacts
from worker.shared.macos import SOCKETFILTERFW
from worker.shared.modelfiles import is_hub_id  # a hub model is fetched on each rank before it starts


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
        issues.append(
            f"hostname '{report.hostname}' resolves to {resolved}, not its group address {address}: add "
            f"'{address} {report.hostname}' to /etc/hosts (gloo hangs at rendezvous otherwise)"
        )
    if not report.python_version:
        issues.append(f"the engine's interpreter {python} does not run (set engine_python for this host)")
    elif not report.ray_version:
        issues.append(
            f"Ray is not installed in the engine's venv: run `{python} -m pip install ray`, or "
            "`cluster install --with-vllm-metal`"
        )
    return issues + _firewall(report.firewall, report.firewall_detail, python)


def _firewall(state: str, detail: str, python: str) -> list[str]:
    """The macOS firewall's verdict on the engine's interpreter, as a problem with its fix (or none)."""
    if state not in ("blocks", "unlisted"):
        return []
    what = "blocks" if state == "blocks" else "has no rule for"
    return [
        f"the macOS firewall {what} the engine's interpreter ({detail}): `sudo {SOCKETFILTERFW} --add {python} "
        f"--unblockapp {python}` (its real path), or turn the firewall off"
    ]


def _mismatches(group: GroupPlan, members: Mapping[str, Member]) -> list[tuple[str, str]]:
    reports = {label: members[label].report for label in group.hosts}
    issues: list[tuple[str, str]] = []
    for what, value in (
        ("Python", lambda r: ".".join(r.python_version.split(".")[:2])),
        ("Ray", lambda r: r.ray_version),
    ):
        seen = {label: value(r) for label, r in reports.items() if r.python_version and r.ray_version}
        if len(set(seen.values())) > 1:
            listing = ", ".join(f"{label} {v}" for label, v in seen.items())
            issues += [
                (label, f"{what} versions differ across group {group.name} ({listing}): Ray needs them equal")
                for label in seen
            ]
    return issues


USE_RING = 'transport = "ring"'
JACCL_MACOS = (26, 2)  # Apple TN3205: RDMA over Thunderbolt from macOS 26.2, on Macs with Thunderbolt 5


@dataclass(frozen=True)
class MlxMember:
    host: HostSpec
    platform: str
    report: MlxCheckReply
    model: ModelFacts | None  # the model's files on that host, as its facts said (None: not asked)


def mlx_problems(group: GroupPlan, source: str, members: Mapping[str, MlxMember]) -> dict[str, list[str]]:
    """Per member label, what stops the MLX group (empty lists are left out)."""
    found = {label: [*_mlx_own(members[label], source), *_jaccl(group, members[label])] for label in group.hosts}
    for what, version in (("mlx", lambda r: r.mlx_version), ("mlx-lm", lambda r: r.mlx_lm_version)):
        seen = {label: version(members[label].report) for label in group.hosts if version(members[label].report)}
        if len(set(seen.values())) > 1:
            listing = ", ".join(f"{label} {v}" for label, v in seen.items())
            for label in seen:
                found[label].append(
                    f"{what} versions differ across group {group.name} ({listing}): ranks must "
                    "run one release; `cluster install` installs the head's on every host"
                )
    return {label: issues for label, issues in found.items() if issues}


def _mlx_own(member: MlxMember, source: str) -> list[str]:
    report, host = member.report, member.host
    address = host.group_address or host.address
    issues = []
    if not report.address_local:
        issues.append(
            f"group address {address} is not one of this host's ({', '.join(report.local_addresses)}): "
            "set group_address to one of them (its Thunderbolt bridge IP, say)"
        )
    elif not report.port_free and not report.agent_running:
        issues.append(
            f"port {host.group_port} on {address} is in use by another program: stop it, or set "
            "group_port for this host"
        )
    if not report.mlx_version or not report.mlx_lm_version:
        issues.append(f"mlx and mlx-lm are not both installed for {report.python}: `cluster install --extras mlx`")
    if member.model is not None and not member.model.present and not is_hub_id(source):
        issues.append(
            f"the model's files ({source}) are not on this host: every rank loads its own copy; put them "
            "at the same path on each, or name a hub id"
        )
    return issues + _firewall(report.firewall, report.firewall_detail, report.python)


def _jaccl(group: GroupPlan, member: MlxMember) -> list[str]:
    if group.transport != "jaccl":
        return []
    if member.platform != "darwin":
        return ['JACCL (RDMA over Thunderbolt) runs between Macs only: use transport = "ring"']
    report, issues = member.report, []
    version = tuple(int(part) for part in report.macos_version.split(".")[:2] if part.isdigit())
    if version < JACCL_MACOS:
        running = report.macos_version or "an unknown version"
        issues.append(
            f"JACCL needs macOS {JACCL_MACOS[0]}.{JACCL_MACOS[1]} or later (this Mac runs {running}): "
            f"update macOS, or use {USE_RING}"
        )
    elif not report.rdma_devices:
        issues.append(
            "no RDMA devices (`ibv_devices` lists none): JACCL needs Thunderbolt 5 and RDMA enabled "
            f"once in macOS Recovery (`rdma_ctl enable`, Apple TN3205), or use {USE_RING}"
        )
    else:
        for peer, device in sorted(member.host.rdma_devices.items()):
            if device not in report.rdma_devices:
                issues.append(
                    f"rdma_devices names {device} towards {peer}, not one of this Mac's "
                    f"({', '.join(report.rdma_devices)}): see `ibv_devices`"
                )
    return issues
