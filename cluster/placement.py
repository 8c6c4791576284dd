"""Where each model runs: a pure function from the hosts file to assignments (one engine per host).

A Mac runs one engine: two engines oversubscribe unified memory. Models pinned with `hosts = [...]` take those
hosts; then each model asking for `replicas = N` (default 1) takes N free hosts, largest memory first.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.hostsfile import ClusterSpec, HostSpec, ModelSpec


class PlacementError(Exception):
    """The models do not fit the hosts; the message says which model and how many hosts are missing."""


@dataclass(frozen=True)
class Assignment:
    host: HostSpec
    model: ModelSpec

    @property
    def agent_address(self) -> str:
        return f"{self.host.address}:{self.host.agent_port}"


def plan(spec: ClusterSpec) -> list[Assignment]:
    taken: dict[str, str] = {}  # host label -> model name
    assignments: list[Assignment] = []
    for model in spec.models:
        for label in model.hosts or ():
            host = spec.host(label)
            if host.label in taken:
                raise PlacementError(
                    f"host '{host.label}' is asked to serve both '{taken[host.label]}' and '{model.name}'; "
                    "a host runs one engine"
                )
            taken[host.label] = model.name
            assignments.append(Assignment(host, model))
    free = sorted(
        (h for h in spec.hosts if h.label not in taken), key=lambda h: -(h.memory_gb or 0.0)
    )  # stable: file order among equals
    for model in spec.models:
        if model.hosts is not None:
            continue
        wanted = model.replicas or 1
        if wanted > len(free):
            raise PlacementError(
                f"model '{model.name}' asks for {wanted} replica(s) but only {len(free)} host(s) are free "
                f"({wanted - len(free)} missing)"
            )
        for host in free[:wanted]:
            taken[host.label] = model.name
            assignments.append(Assignment(host, model))
        free = free[wanted:]
    return assignments
