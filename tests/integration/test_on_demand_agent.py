"""An agent's on-demand engines (worker/children.py): the router's Load starts a child agent on this host with
an engine of its own, refused when the host's engines would hold more than its usable memory; Unload stops it;
a child dies with its agent. Sim engines, real gRPC, real processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import pytest

from cluster.bench.demand import sim_child
from cluster.bringup.fleet import Fleet
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from tests.conftest import SIM_MODEL, agent_config, wait_until
from worker.shared import procs
from worker.shared.launch import AgentConfig
from worker.shared.procs import free_port


def stub(address: str) -> pb_grpc.WorkerStub:
    return pb_grpc.WorkerStub(grpc.insecure_channel(address))


def info(agent: pb_grpc.WorkerStub) -> pb.InfoReply | None:
    try:
        return agent.Info(pb.InfoRequest(), timeout=2)
    except grpc.RpcError:
        return None  # not listening yet


def child_argv(tmp: Path, model: str) -> list[str]:
    return list(sim_child(tmp / "logs", model, "h1").argv)  # its logs under its parent's


def test_load_starts_a_child_agent_that_answers_and_unload_stops_it(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "logs")
    main = agent_config("sim", SIM_MODEL, tmp_path / "logs", need_gb=1.0)
    try:
        fleet.start_agent(main, name="agent")
        agent = stub(main.listen)
        wait_until(lambda: info(agent), 30, "the agent answers")
        usable = agent.Info(pb.InfoRequest(), timeout=2).usable_memory_bytes
        assert usable > 1e9
        port = agent.Load(
            pb.LoadRequest(model="coder", argv=child_argv(tmp_path, "coder"), need_bytes=10**8), timeout=90
        ).port
        assert port and [(c.model, c.port) for c in agent.Info(pb.InfoRequest(), timeout=2).children] == [
            ("coder", port)
        ]
        child = stub(f"127.0.0.1:{port}")
        answer = wait_until(lambda: info(child), 30, "the child answers")
        assert [m.name for m in answer.models] == ["coder"]
        # the same model again: the same child
        again = agent.Load(
            pb.LoadRequest(model="coder", argv=child_argv(tmp_path, "coder"), need_bytes=10**8), timeout=30
        )
        assert again.port == port
        # more than the host holds: refused, naming the figures
        with pytest.raises(grpc.RpcError) as refused:
            agent.Load(pb.LoadRequest(model="huge", argv=child_argv(tmp_path, "huge"), need_bytes=usable), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "huge needs" in (refused.value.details() or "") and "this host's engines hold 1.1 of" in (
            refused.value.details() or ""
        )
        for foreign in (["--engine-python", "/bin/sh"], ["--log-dir", str(tmp_path / "elsewhere")]):
            with pytest.raises(grpc.RpcError) as other:  # a Load names a model, never another program or place
                agent.Load(
                    pb.LoadRequest(model="x", argv=child_argv(tmp_path, "x") + foreign, need_bytes=1), timeout=30
                )
            assert "a child agent" in (other.value.details() or "")
        pids = procs.descendants(fleet.children[0].pid)
        assert agent.Unload(pb.UnloadRequest(model="coder"), timeout=60).was_loaded
        assert not agent.Info(pb.InfoRequest(), timeout=2).children
        wait_until(
            lambda: not any(procs.alive(p) for p in pids if p not in procs.descendants(fleet.children[0].pid)),
            30,
            "the child and its engine are gone",
        )
        assert not agent.Unload(pb.UnloadRequest(model="coder"), timeout=10).was_loaded
    finally:
        fleet.stop()


def test_a_child_dies_with_its_agent(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "logs")
    main = agent_config("sim", SIM_MODEL, tmp_path / "logs")
    try:
        fleet.start_agent(main, name="agent")
        agent = stub(main.listen)
        wait_until(lambda: info(agent), 30, "the agent answers")
        port = agent.Load(
            pb.LoadRequest(model="chat", argv=child_argv(tmp_path, "chat"), need_bytes=1), timeout=90
        ).port
        wait_until(lambda: info(stub(f"127.0.0.1:{port}")), 30, "the child answers")
        family = procs.descendants(fleet.children[0].pid)
        os.kill(fleet.children[0].pid, signal.SIGKILL)  # no goodbye: the tether must end the child
        wait_until(lambda: not any(procs.alive(p) for p in family), 30, "every process of the agent gone")
    finally:
        fleet.stop()


def test_a_vacant_agent_runs_no_engine_of_its_own_only_children(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "logs")
    main = AgentConfig(listen=f"127.0.0.1:{free_port()}", engine="none", log_dir=str(tmp_path / "logs"))
    try:
        fleet.start_agent(main, name="agent")
        agent = stub(main.listen)
        found = wait_until(lambda: info(agent), 30, "the agent answers")
        assert (found.engine, list(found.models)) == ("none", [])
        sample = next(iter(agent.Watch(pb.WatchRequest(interval_seconds=0.1), timeout=5)))
        assert sample.state == pb.ENGINE_STATE_STOPPED and "no engine of its own" in sample.state_detail
        port = agent.Load(
            pb.LoadRequest(model="coder", argv=child_argv(tmp_path, "coder"), need_bytes=1), timeout=90
        ).port
        child = wait_until(lambda: info(stub(f"127.0.0.1:{port}")), 30, "the child answers")
        assert [m.name for m in child.models] == ["coder"]
    finally:
        fleet.stop()
