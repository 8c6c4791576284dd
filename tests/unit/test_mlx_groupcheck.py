"""Preflight for MLX shard groups: each member's report in (worker/mlxcheck.py, its darwin branch run on
fixtures in Apple's formats), each problem named per host with its fix — before any rank starts."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from cluster.bringup.groupcheck import MlxMember, mlx_problems
from cluster.placement.hostsfile import HostSpec
from cluster.placement.plan import GroupPlan
from worker import mlxcheck
from worker.shared.daemon import MlxCheckReply, ModelFacts
from worker.shared.procs import free_port

FIXTURES = Path(__file__).with_name("fixtures")
RING = GroupPlan(
    model="big",
    index=0,
    mode="pipeline",
    backend="mlx",
    transport="ring",
    hosts=("s1", "s2"),
    shares=(0.5, 0.5),
    layers=(40, 40),
)
JACCL = GroupPlan(**{**RING.__dict__, "transport": "jaccl"})
HELD = ModelFacts(present=True, layers=80)


def report(address: str = "10.0.5.2", **fields: object) -> MlxCheckReply:
    values: dict[str, object] = {
        "local_addresses": ["127.0.0.1", address],
        "address_local": True,
        "port_free": True,
        "agent_running": False,
        "mlx_version": "0.32.4",
        "mlx_lm_version": "0.32.2",
        "python": "/Users/lab/.orchard/venv/bin/python",
    }
    return MlxCheckReply.model_validate({**values, **fields})


def members(
    r1: MlxCheckReply,
    r2: MlxCheckReply,
    model: ModelFacts | None = HELD,
    platform: str = "darwin",
    devices: dict[str, str] | None = None,
) -> dict[str, MlxMember]:
    s1 = HostSpec(address="10.0.0.2", name="s1", group_address="10.0.5.2", rdma_devices=devices or {})
    s2 = HostSpec(address="10.0.0.3", name="s2", group_address="10.0.5.3")
    return {"s1": MlxMember(s1, platform, r1, model), "s2": MlxMember(s2, platform, r2, model)}


def test_a_ready_ring_group_has_no_problems() -> None:
    assert mlx_problems(RING, "/models/big", members(report(), report("10.0.5.3"))) == {}


def test_a_group_address_that_is_not_the_hosts_own_is_named_with_its_addresses() -> None:
    found = mlx_problems(RING, "/m", members(report(address_local=False, local_addresses=["10.0.0.2"]), report()))
    [issue] = found["s1"]
    assert "group address 10.0.5.2 is not one of this host's (10.0.0.2)" in issue and "s2" not in found


def test_a_taken_port_is_a_problem_unless_the_agent_running_there_holds_it() -> None:
    taken = mlx_problems(RING, "/m", members(report(port_free=False), report()))
    assert "port 52100 on 10.0.5.2 is in use by another program" in taken["s1"][0]
    assert mlx_problems(RING, "/m", members(report(port_free=False, agent_running=True), report())) == {}


def test_different_mlx_lm_releases_are_named_on_every_member() -> None:
    found = mlx_problems(RING, "/m", members(report(), report(mlx_lm_version="0.31.3")))
    assert all("mlx-lm versions differ across group big#1 (s1 0.32.2, s2 0.31.3)" in found[h][0] for h in ("s1", "s2"))


def test_a_model_path_missing_on_a_rank_is_named_a_hub_id_is_fetched_there() -> None:
    absent = ModelFacts(present=False)
    found = mlx_problems(RING, "/models/big", members(report(), report(), model=absent))
    assert "the model's files (/models/big) are not on this host" in found["s1"][0]
    assert mlx_problems(RING, "org/big", members(report(), report(), model=absent)) == {}


def test_a_firewall_without_a_rule_for_the_engine_names_the_command() -> None:
    found = mlx_problems(RING, "/m", members(report(firewall="unlisted", firewall_detail="(State = 1)"), report()))
    assert "socketfilterfw --add /Users/lab/.orchard/venv/bin/python" in found["s1"][0]


def test_jaccl_needs_macos_26_2_and_rdma_devices_as_apples_tn3205_says() -> None:
    devices = mlxcheck.parse_ibv_devices((FIXTURES / "ibv_devices.txt").read_text())
    assert devices == ["rdma_en2", "rdma_en3", "rdma_en4"]
    ready = report(macos_version="26.2", rdma_devices=devices)
    assert mlx_problems(JACCL, "/m", members(ready, ready, devices={"s2": "rdma_en3"})) == {}
    old = mlx_problems(JACCL, "/m", members(report(macos_version="15.3.1", rdma_devices=[]), ready))
    assert "JACCL needs macOS 26.2 or later (this Mac runs 15.3.1)" in old["s1"][0]
    off = mlx_problems(JACCL, "/m", members(report(macos_version="26.3", rdma_devices=[]), ready))
    assert "rdma_ctl enable" in off["s1"][0] and "Thunderbolt 5" in off["s1"][0]
    wrong = mlx_problems(JACCL, "/m", members(ready, ready, devices={"s2": "rdma_en7"}))
    assert (
        "rdma_devices names rdma_en7 towards s2, not one of this Mac's (rdma_en2, rdma_en3, rdma_en4)" in wrong["s1"][0]
    )
    assert "between Macs only" in mlx_problems(JACCL, "/m", members(ready, ready, platform="linux"))["s1"][0]


def test_the_host_side_check_asks_apples_tools_on_a_mac() -> None:
    asked: list[list[str]] = []
    answers = {
        "--getglobalstate": "Firewall is disabled. (State = 0)\n",
        "-productVersion": "26.2\n",
        "ibv_devices": (FIXTURES / "ibv_devices.txt").read_text(),
    }

    def run(argv: list[str]) -> str:
        asked.append(argv)
        return next(text for key, text in answers.items() if key in argv or argv[0] == key)

    reply = mlxcheck.mlxcheck("127.0.0.1", free_port(), "jaccl", False, run, platform="darwin")
    assert reply.address_local and reply.port_free and reply.firewall == "off"
    assert reply.macos_version == "26.2" and reply.rdma_devices == ["rdma_en2", "rdma_en3", "rdma_en4"]
    assert reply.mlx_lm_version  # this venv's mlx-lm
    assert mlxcheck.mlxcheck("127.0.0.1", free_port(), "ring", False, run, platform="linux").rdma_devices is None


def test_a_port_in_use_and_a_foreign_address_are_seen_for_real() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert mlxcheck.mlxcheck("127.0.0.1", port, "ring", False, lambda a: "").port_free is False
    assert mlxcheck.mlxcheck("192.0.2.77", 52100, "ring", False, lambda a: "").address_local is False


def test_the_daemon_answers_mlxcheck_as_the_head_asks_it(tmp_path: Path) -> None:
    import sys

    argv = [
        sys.executable,
        "-m",
        "worker.daemon",
        "mlxcheck",
        "--dir",
        str(tmp_path),
        "--group-address",
        "127.0.0.1",
        "--group-port",
        str(free_port()),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    reply = MlxCheckReply.model_validate_json(out.stdout.strip().splitlines()[-1])
    assert reply.address_local and reply.port_free and not reply.agent_running
