"""The shard-group controller's decisions on hand-made Watch samples (the group runs for real in tests/lab)."""

from __future__ import annotations

from pathlib import Path

from proto import orchard_pb2 as pb
from worker.engines.base import EngineConfig, GroupRole
from worker.engines.sim import SimEngine
from worker.group import GroupController
from worker.supervisor import EngineSupervisor

PEERS = ("10.0.0.2:50051", "10.0.0.3:50051", "10.0.0.4:50051")


def controller(rank: int, tmp_path: Path) -> GroupController:
    role = GroupRole(name="s#1", rank=rank, mode="tensor", backend="mlx", members=("a:1", "b:1", "c:1"), peers=PEERS)
    supervisor = EngineSupervisor(SimEngine(), EngineConfig("sim", "m", "m"), tmp_path)
    return GroupController(role, supervisor)


def sample(epoch: str = "", instance: str = "agent-a", crashes: int = 0) -> pb.LoadSample:
    return pb.LoadSample(
        state=pb.ENGINE_STATE_READY, group_epoch=epoch, agent_instance=instance, engine_crashes=crashes
    )


def restart_asked(group: GroupController) -> str | None:
    return group.supervisor._restart_reason


def test_rank_zero_launches_only_when_every_member_is_reachable_and_each_launch_is_a_new_epoch(
    tmp_path: Path,
) -> None:
    group = controller(0, tmp_path)
    assert group.gate() == "group s#1: waiting for members 10.0.0.3:50051, 10.0.0.4:50051"
    group.observe(group.peers[PEERS[1]], sample())
    assert group.gate() == "group s#1: waiting for members 10.0.0.4:50051"
    group.observe(group.peers[PEERS[2]], sample())
    assert group.gate() is None
    first = group.run_epoch
    assert first and group.gate() is None and group.run_epoch != first


def test_a_member_follows_rank_zeros_epoch(tmp_path: Path) -> None:
    group = controller(2, tmp_path)
    leader = group.peers[PEERS[0]]
    assert group.gate() == "group s#1: waiting for rank 0 (10.0.0.2:50051) to launch"
    group.observe(leader, sample(epoch=""))  # rank 0 is waiting for the others
    assert group.gate() is not None
    group.observe(leader, sample(epoch="e1"))
    assert group.gate() is None and group.run_epoch == "e1"
    group.observe(leader, sample(epoch="e1"))
    assert restart_asked(group) is None
    group.observe(leader, sample(epoch="e2"))  # rank 0 relaunched the group: this rank must go too
    assert restart_asked(group) == "group s#1: rank 0 relaunched the group (epoch e2)"
    assert group.run_epoch == ""


def launched_leader(tmp_path: Path) -> GroupController:
    group = controller(0, tmp_path)
    for address in PEERS[1:]:
        group.observe(group.peers[address], sample(instance=address))
    assert group.gate() is None
    for address in PEERS[1:]:
        group.observe(group.peers[address], sample(epoch=group.run_epoch, instance=address))
    assert restart_asked(group) is None
    return group


def test_rank_zero_relaunches_when_a_member_loses_its_process_in_this_epoch(tmp_path: Path) -> None:
    group = launched_leader(tmp_path)
    member = group.peers[PEERS[1]]
    group.observe(member, sample(epoch=group.run_epoch, instance=PEERS[1], crashes=1))
    assert restart_asked(group) == "group s#1: member 10.0.0.3:50051 lost its rank process"


def test_a_crash_of_a_process_from_an_older_epoch_does_not_relaunch_again(tmp_path: Path) -> None:
    group = launched_leader(tmp_path)
    group.observe(group.peers[PEERS[1]], sample(epoch="an-older-epoch", instance=PEERS[1], crashes=1))
    assert restart_asked(group) is None


def test_rank_zero_relaunches_when_a_member_agent_restarts_or_is_lost(tmp_path: Path) -> None:
    group = launched_leader(tmp_path)
    group.observe(group.peers[PEERS[2]], sample(epoch="", instance="a-new-agent"))
    assert restart_asked(group) == "group s#1: member 10.0.0.4:50051 restarted its agent"
    group = launched_leader(tmp_path)
    group.lost(group.peers[PEERS[1]])
    assert restart_asked(group) == "group s#1: member 10.0.0.3:50051 is unreachable"
    assert group.gate() == "group s#1: waiting for members 10.0.0.3:50051"  # and it waits for it to return
