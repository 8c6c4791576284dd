"""What `cluster up` checks before it starts anything, host by host: reach and build (preflight), the engine
each host was assigned, a pipeline group's layer count, and what each shard group needs from its members
(groupcheck.py decides from their reports). A host that fails a check takes no further step; its row says why.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from cluster.bringup import groupcheck, remote
from cluster.bringup.fleet import Report
from cluster.placement.hostsfile import HostSpec
from cluster.placement.plan import Assignment, GroupPlan, PlacementError
from worker.shared.daemon import HostFactsReply

# A host's bring-up, as the `cluster up` table shows it (its engine's own state is worker.shared.states.EngineState).
HostState = Literal["pending", "started", "running", "ready", "not ready", "unreachable", "failed", "idle"]


@dataclass
class HostOutcome:
    label: str
    address: str
    state: HostState = "pending"
    reason: str = ""
    os: str = ""
    chip: str = ""
    memory_bytes: int = 0
    usable_memory_bytes: int = 0
    engine: str = ""
    models: list[str] = field(default_factory=list)
    pid: int | None = None


@dataclass
class Probe:
    """A host after connect + preflight: its outcome so far and the open connection (None if unreachable)."""

    outcome: HostOutcome
    conn: Any = None
    platform: str = ""
    facts: HostFactsReply | None = None

    def fail(self, reason: str) -> None:
        """This host takes no further step: its connection is closed and its row says why."""
        self.outcome.state, self.outcome.reason = "failed", reason
        if self.conn is not None:
            self.conn.close()
            self.conn = None


async def probe(host: HostSpec, sources: tuple[str, ...], report: Report) -> Probe:
    outcome = HostOutcome(host.label, host.address, engine=host.engine)
    try:
        conn = await remote.connect(host)
    except remote.RemoteError as exc:
        outcome.state, outcome.reason = "unreachable", str(exc)
        report(f"{host.label}: {exc}")
        return Probe(outcome)
    try:
        facts = await remote.preflight(conn, host, sources)
    except remote.RemoteError as exc:
        conn.close()
        outcome.state, outcome.reason = "failed", str(exc)
        report(f"{host.label}: {exc}")
        return Probe(outcome)
    outcome.os, outcome.chip, outcome.memory_bytes = facts.os, facts.chip, facts.memory_bytes
    outcome.usable_memory_bytes = facts.usable_memory_bytes
    report(f"{host.label}: reachable — {facts.chip}, {facts.os}, {facts.memory_bytes / 2**30:.0f} GiB")
    return Probe(outcome, conn, facts.platform, facts)


def layers_known(assignments: list[Assignment]) -> None:
    """An mlx pipeline group splits by layers: with no copy of the model's config.json in reach, say how to go on."""
    for a in assignments:
        group = a.group
        if group is not None and group.backend == "mlx" and group.mode == "pipeline" and group.layers is None:
            where = ", ".join(group.hosts)
            raise PlacementError(
                f"model '{a.model.name}': an mlx pipeline group splits the model by layers, and no "
                f"config.json of {a.model.source} was found on the head or on {where}; give "
                "`layers = N` on the model in the hosts file, or put the model on its hosts"
            )


def check_engines(assignments: list[Assignment], probes: dict[str, Probe], report: Report) -> None:
    """Each host must run the engine it was assigned (its own, or its group's backend); a group with a member that
    cannot starts nowhere."""
    for a in assignments:
        probe = probes[a.host.label]
        if probe.facts is None or probe.conn is None:
            continue
        engine = a.group.backend if a.group else a.host.engine
        if (problem := remote.engine_problem(probe.facts, engine)) is None:
            continue
        report(f"{a.host.label}: {problem}")
        probe.fail(problem)
        if a.group is not None:
            for label in a.group.hosts:
                if label != a.host.label and probes[label].conn is not None:
                    probes[label].fail(f"group {a.group.name} cannot start: {a.host.label}: {problem}")


async def check_groups(
    assignments: list[Assignment], probes: dict[str, Probe], report: Report, copied: frozenset[str] = frozenset()
) -> None:
    """Shard groups whose members lack what they need (Ray for vLLM; addresses, ports, versions, the model and
    the transport for MLX) fail before anything starts, every member saying why. A model in `copied` (by name)
    is not looked for on the members: the store copies it there before the engines start."""
    groups = {a.group.name: (a.group, a.model.source) for a in assignments if a.group is not None}
    hosts = {a.host.label: a.host for a in assignments}
    for group, source in groups.values():
        reachable = {label: probes[label] for label in group.hosts if probes[label].conn is not None}
        if len(reachable) < len(group.hosts):
            continue  # an unreachable member already fails the group
        try:
            found = await _group_problems(group, source, reachable, hosts, group.model in copied)
        except remote.RemoteError as exc:
            failure = str(exc)
        else:
            failure = "; ".join(f"{label}: {', '.join(issues)}" for label, issues in found.items())
        if not failure:
            continue
        report(f"group {group.name} cannot start: {failure}")
        for probe in reachable.values():
            probe.fail(f"group {group.name} cannot start: {failure}")


async def _group_problems(
    group: GroupPlan, source: str, reachable: dict[str, Probe], hosts: dict[str, HostSpec], copied: bool = False
) -> dict[str, list[str]]:
    if group.backend == "vllm":
        replies = await asyncio.gather(*(remote.group_check(p.conn, hosts[label]) for label, p in reachable.items()))
        members = {
            label: groupcheck.Member(hosts[label], p.platform, reply)
            for (label, p), reply in zip(reachable.items(), replies, strict=True)
        }
        return groupcheck.problems(group, members)
    checks = await asyncio.gather(
        *(remote.mlx_check(p.conn, hosts[label], group.transport) for label, p in reachable.items())
    )
    mlx = {
        label: groupcheck.MlxMember(
            hosts[label], p.platform, reply, p.facts.models.get(source) if p.facts and not copied else None
        )
        for (label, p), reply in zip(reachable.items(), checks, strict=True)
    }
    return groupcheck.mlx_problems(group, source, mlx)
