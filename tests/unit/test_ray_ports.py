"""A vLLM group's Ray cluster opens only ports Orchard chose: every one from the host's group_port, in one range
the hosts file declares and a firewall can pass on the group link alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.placement.hostsfile import HostsFileError, parse
from worker.engines.base import EngineConfig, GroupRole
from worker.engines.programs.vllm_group import ray_start
from worker.engines.vllm import VllmEngine
from worker.shared.rayports import RAY_PORT_SPAN, RayPorts, ray_ports

PINNED = (
    "--node-manager-port",
    "--object-manager-port",
    "--runtime-env-agent-port",
    "--dashboard-agent-grpc-port",
    "--dashboard-agent-listen-port",
    "--metrics-export-port",
    "--min-worker-port",
    "--max-worker-port",
)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_every_ray_port_is_distinct_and_inside_the_declared_range() -> None:
    ports = ray_ports(52100)
    single = [v for k, v in vars(ports).items() if not k.endswith("_worker")]
    assert ports.gcs == 52100 and len(set(single)) == len(single)
    assert all(52100 <= port < 52100 + RAY_PORT_SPAN for port in vars(ports).values())
    assert max(single) < ports.min_worker < ports.max_worker == 52100 + RAY_PORT_SPAN - 1


def test_a_range_past_the_last_port_is_refused() -> None:
    assert ray_ports(65536 - RAY_PORT_SPAN).max_worker == 65535
    with pytest.raises(ValueError, match="group port 65500"):
        ray_ports(65500)


def test_the_head_pins_its_gcs_client_server_and_autoscaler_ports_and_every_node_port() -> None:
    ports = ray_ports(52100)
    argv = ray_start("py", "10.0.5.2", "{}", ports, join=None, temp_dir="/tmp/orchard-ray-x")
    assert flag(argv, "--node-ip-address") == "10.0.5.2" and flag(argv, "--port") == "52100"
    assert flag(argv, "--ray-client-server-port") == str(ports.client_server) and "--head" in argv
    assert [int(flag(argv, name)) for name in PINNED] == node_ports(ports)
    assert ports.head_env() == {"AUTOSCALER_METRIC_PORT": str(ports.autoscaler_metrics)}


def test_a_member_pins_its_own_node_ports_and_joins_the_heads_gcs() -> None:
    ports = ray_ports(53000)
    argv = ray_start("py", "10.0.5.3", "{}", ports, join="10.0.5.2:52100")
    assert flag(argv, "--address") == "10.0.5.2:52100" and flag(argv, "--node-ip-address") == "10.0.5.3"
    assert "--port" not in argv and "--ray-client-server-port" not in argv and "--head" not in argv
    assert [int(flag(argv, name)) for name in PINNED] == node_ports(ports)


def node_ports(ports: RayPorts) -> list[int]:
    return [
        ports.node_manager,
        ports.object_manager,
        ports.runtime_env_agent,
        ports.dashboard_agent_grpc,
        ports.dashboard_agent_http,
        ports.metrics_export,
        ports.min_worker,
        ports.max_worker,
    ]


def group(rank: int, members: tuple[str, ...]) -> EngineConfig:
    role = GroupRole(
        name="big#1", rank=rank, backend="vllm", members=members, peers=("10.0.0.2:50051", "10.0.0.3:50051")
    )
    return EngineConfig("vllm", "/models/big", "big", group=role)


def test_each_rank_takes_its_ray_ports_from_its_own_group_port() -> None:
    argv = list(VllmEngine(platform="linux").plan(group(1, ("10.0.5.2:52100", "10.0.5.3:53000")), port=1).argv)
    assert flag(argv, "--ray-port") == "53000" and flag(argv, "--head") == "10.0.5.2:52100"


def test_a_group_port_without_room_for_rays_ports_is_a_bad_engine_configuration() -> None:
    with pytest.raises(ValueError, match="group port 65500"):
        VllmEngine(platform="linux").plan(group(0, ("10.0.5.2:65500", "10.0.5.3:52100")), port=1)


HOSTS = """\
[[hosts]]
address = "10.0.0.2"
engine = "{engine}"
{extra}

[[models]]
name = "m"
source = "smollm2-135m-instruct"
"""


def test_the_hosts_file_refuses_an_agent_port_inside_a_vllm_hosts_ray_range() -> None:
    with pytest.raises(HostsFileError, match=r"lab.toml:1: .*agent_port 52150 falls in the Ray ports"):
        parse(HOSTS.format(engine="vllm", extra="agent_port = 52150"), Path("lab.toml"))


def test_the_hosts_file_refuses_a_vllm_group_port_without_room_for_rays_ports_but_not_an_mlx_one() -> None:
    with pytest.raises(HostsFileError, match="group_port 65500"):
        parse(HOSTS.format(engine="vllm", extra="group_port = 65500"), Path("lab.toml"))
    assert parse(HOSTS.format(engine="mlx", extra="group_port = 65500"), Path("lab.toml")).hosts[0].group_port == 65500
