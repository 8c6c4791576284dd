"""Every port one node of a vLLM group's Ray cluster opens, from its host's `group_port` (the member's port).

Left alone, Ray picks most of them at random, and its GCS, raylet (node and object managers), workers and the
head's autoscaler metrics listen on every interface: Ray 2.x has no bind address for them (`--node-ip-address`
only chooses the address it advertises and dials). Pinned, they fall in one range a firewall can open on the
group's link alone. The Ray Client server and the runtime-env agent bind the node's address; the dashboard is
off. Ray's own TLS is not turned on: it checks every peer's certificate against the address dialled (the group
address, and 127.0.0.1), which the agents' certificates do not name.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKER_PORTS = 100  # one per Ray worker or driver process: vLLM's rank actors, its engine core, idle workers
FIXED_PORTS = 10  # the named ports below, from the base up (two spare)
RAY_PORT_SPAN = FIXED_PORTS + WORKER_PORTS  # a group host uses group_port .. group_port + RAY_PORT_SPAN - 1


@dataclass(frozen=True)
class RayPorts:
    gcs: int  # the head's GCS (`ray start --port`): what the members join, at the head's group address
    node_manager: int
    object_manager: int
    runtime_env_agent: int
    dashboard_agent_grpc: int  # also Ray's metrics agent
    dashboard_agent_http: int
    metrics_export: int
    client_server: int  # head: Ray Client
    autoscaler_metrics: int  # head: the monitor's Prometheus port, set only through its environment
    min_worker: int
    max_worker: int

    def start_args(self, *, head: bool) -> list[str]:
        """The `ray start` flags that pin every port this node opens (a member has no GCS or Ray Client)."""
        args = [
            "--node-manager-port",
            str(self.node_manager),
            "--object-manager-port",
            str(self.object_manager),
            "--runtime-env-agent-port",
            str(self.runtime_env_agent),
            "--dashboard-agent-grpc-port",
            str(self.dashboard_agent_grpc),
            "--dashboard-agent-listen-port",
            str(self.dashboard_agent_http),
            "--metrics-export-port",
            str(self.metrics_export),
            "--min-worker-port",
            str(self.min_worker),
            "--max-worker-port",
            str(self.max_worker),
        ]
        if head:
            args = ["--port", str(self.gcs), "--ray-client-server-port", str(self.client_server), *args]
        return args

    def head_env(self) -> dict[str, str]:
        """What the head's `ray start` needs in its environment for the one port no flag sets."""
        return {"AUTOSCALER_METRIC_PORT": str(self.autoscaler_metrics)}


def ray_ports(base: int) -> RayPorts:
    """The ports of a node whose group port is `base`; ValueError if the range runs past 65535."""
    if not 1 <= base <= 65536 - RAY_PORT_SPAN:
        raise ValueError(
            f"group port {base}: a vLLM group's Ray node needs ports {base}..{base + RAY_PORT_SPAN - 1}"
            f"; give a group_port from 1 to {65536 - RAY_PORT_SPAN}"
        )
    return RayPorts(
        gcs=base,
        node_manager=base + 1,
        object_manager=base + 2,
        runtime_env_agent=base + 3,
        dashboard_agent_grpc=base + 4,
        dashboard_agent_http=base + 5,
        metrics_export=base + 6,
        client_server=base + 7,
        autoscaler_metrics=base + 8,
        min_worker=base + FIXED_PORTS,
        max_worker=base + RAY_PORT_SPAN - 1,
    )
