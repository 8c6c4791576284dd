"""On-demand models in `cluster up` (issue 30): which hosts may load each one, its files copied there like a
pinned model's, and the catalog the router loads and unloads by (cluster/placement/offers.py), written to
`~/.orchard/demand-<digest>.json` so that a changed catalog is a changed router command line (a hand-over).

A host loads on-demand models through its agent: its pinned model's, or, on a host with no pinned model, a
vacant agent (`--engine none`) that runs only on-demand engines. A shard group's members offer none (their
memory is the group's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from cluster.bringup import remote
from cluster.bringup.fleet import Report
from cluster.placement import offers
from cluster.placement.hostsfile import ClusterSpec, HostSpec
from cluster.placement.offers import DemandCatalog, HostRoom, Offered, Placeable
from cluster.placement.plan import Assignment, Room
from worker.shared.launch import LaunchConfigError
from worker.shared.models import ModelError

GB = 1e9


def hosts_for(spec: ClusterSpec, assignments: list[Assignment]) -> dict[str, list[HostSpec]]:
    """By on-demand model, the hosts it may load on: its `hosts` (or every host), a shard group's members aside."""
    grouped = {a.host.label for a in assignments if a.group is not None}
    return {
        model.name: [
            h for h in spec.hosts if (model.hosts is None or h.label in model.hosts) and h.label not in grouped
        ]
        for model in spec.models
        if model.load == "on-demand"
    }


def vacant(spec: ClusterSpec, assignments: list[Assignment], hosts: Mapping[str, Sequence[HostSpec]]) -> list[HostSpec]:
    """Hosts with no pinned model that offer on-demand ones: they run a vacant agent."""
    placed = {a.host.label for a in assignments}
    offering = {h.label for found in hosts.values() for h in found}
    return [h for h in spec.hosts if h.label in offering and h.label not in placed]


def catalog(
    spec: ClusterSpec,
    assignments: list[Assignment],
    room: Room,
    hosts: Mapping[str, Sequence[HostSpec]],
    folders: Mapping[tuple[str, str], str | ModelError],
    report: Report,
) -> DemandCatalog:
    pinned = {a.host.label: a for a in assignments if a.group is None}
    rooms = tuple(
        HostRoom(
            label=h.label,
            agent=h.agent_address,
            usable_bytes=int((room.usable_gb.get(h.label) or 0.0) * GB),
            pinned_bytes=int((pinned[h.label].need_gb or 0.0) * GB) if h.label in pinned else 0,
            pinned_model=pinned[h.label].model.name if h.label in pinned else "",
        )
        for h in spec.hosts
        if any(h in found for found in hosts.values())
    )
    models = []
    for model in spec.models:
        need = room.need_gb.get(model.name)
        if model.load != "on-demand" or not hosts.get(model.name):
            continue
        if need is None:
            report(
                f"warning: on-demand model {model.name}: its size is not known (not in the store, no size_gb): "
                "not offered"
            )
            continue
        places = []
        for host in hosts[model.name]:
            folder = folders.get((model.name, host.label))
            if isinstance(folder, ModelError):
                report(f"{host.label}: {model.name} is not offered here: {folder}")
                continue
            try:
                config = remote.on_demand_config(host, model, folder, need)
            except LaunchConfigError as exc:
                report(f"{host.label}: {model.name} is not offered here: {exc}")
                continue
            places.append(Placeable(host=host.label, argv=tuple(config.to_argv())))
        if places:
            models.append(
                Offered(
                    name=model.name,
                    engine=spec.host(places[0].host).engine,
                    source=model.source,
                    need_bytes=int(need * GB),
                    keep_alive_s=model.keep_alive,
                    min_replicas=model.min_replicas,
                    max_replicas=model.max_replicas,
                    places=tuple(places),
                )
            )
    return DemandCatalog(hosts=rooms, models=tuple(models))


def write(home: Path, found: DemandCatalog) -> Path | None:
    """The catalog's file (older ones removed); None when the lab offers nothing on demand."""
    for old in home.glob("demand-*.json"):
        old.unlink(missing_ok=True)
    if not found.models:
        return None
    text = found.model_dump_json()
    path = home / f"demand-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    offers.write(path, found)
    return path
