"""What `cluster up` checks before it starts anything, on plain data: each host's assigned engine, a model's
facts from whichever machine holds its files, a pipeline group's layer count, the engine's ready deadline."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.bringup import local, preflight, remote
from cluster.placement import sizing
from cluster.placement.hostsfile import parse
from cluster.placement.plan import PlacementError, plan
from worker.shared.daemon import HostFactsReply, ModelFacts

LAB = """
[[hosts]]
name = "a"
address = "10.0.0.2"
memory_gb = 64
[[hosts]]
name = "b"
address = "10.0.0.3"
memory_gb = 64
[[models]]
name = "big"
source = "org/big-mlx"
hosts = ["a", "b"]
mode = "pipeline"
backend = "mlx"
"""


def facts(engines: dict[str, bool], models: dict[str, ModelFacts] | None = None) -> HostFactsReply:
    return HostFactsReply(
        hostname="h",
        os="macOS 15.3.1",
        chip="Apple M2 Ultra",
        memory_bytes=64 * 2**30,
        python="/p",
        platform="darwin",
        engines=engines,
        models=models or {},
    )


class Connection:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_host_is_checked_for_the_engine_it_was_assigned_not_its_default() -> None:
    spec = parse(LAB, Path("lab.toml"))
    assignments = plan(spec, {"big": ModelFacts(present=True, layers=80, weights_gb=70)})
    assert all(a.host.engine == "vllm" and a.group is not None and a.group.backend == "mlx" for a in assignments)

    def probes(b_engines: dict[str, bool]) -> dict[str, preflight.Probe]:
        return {
            label: preflight.Probe(preflight.HostOutcome(label, ""), Connection(), "darwin", facts(engines))
            for label, engines in (("a", {"vllm": False, "mlx": True}), ("b", b_engines))
        }

    ready = probes({"vllm": False, "mlx": True})  # no vLLM anywhere: not what the group runs
    preflight.check_engines(assignments, ready, lambda line: None)
    assert all(p.conn is not None and p.outcome.state == "pending" for p in ready.values())
    lacking = probes({"vllm": True, "mlx": False})
    preflight.check_engines(assignments, lacking, lambda line: None)
    assert (
        "engine 'mlx' is not available" in lacking["b"].outcome.reason and "--extras mlx" in lacking["b"].outcome.reason
    )
    assert lacking["a"].outcome.reason.startswith("group big#1 cannot start: b: engine 'mlx'")
    assert all(p.conn is None and p.outcome.state == "failed" for p in lacking.values())


def test_a_models_facts_come_from_a_host_when_the_head_has_no_copy() -> None:
    on_b = ModelFacts(present=True, layers=80, weights_gb=70)
    gathered = sizing.gathered("org/big-mlx", ModelFacts(), [{"org/big-mlx": ModelFacts()}, {"org/big-mlx": on_b}])
    assert gathered == on_b
    head = ModelFacts(present=True, layers=32, mlx_pipeline="none")  # the head's older mlx-lm
    merged = sizing.gathered(
        "org/big-mlx", head, [{"org/big-mlx": on_b.model_copy(update={"mlx_pipeline": "planned"})}]
    )
    assert merged.layers == 32 and merged.mlx_pipeline == "planned"  # the shape from the head, the split from a rank


def test_an_mlx_pipeline_without_a_layer_count_anywhere_says_how_to_give_one() -> None:
    spec = parse(LAB, Path("lab.toml"))
    with pytest.raises(PlacementError, match="give `layers = N` on the model in the hosts file"):
        preflight.layers_known(plan(spec, {}))
    given = parse(LAB.replace('backend = "mlx"', 'backend = "mlx"\nlayers = 80'), Path("lab.toml"))
    preflight.layers_known(plan(given, {}))  # the hosts file's count splits it: no error
    assert plan(given, {})[0].group is not None


def test_the_hosts_file_sets_how_long_an_engine_may_take_to_be_ready() -> None:
    spec = parse(LAB.replace('backend = "mlx"', 'backend = "mlx"\nlayers = 80\nready_timeout_s = 3600'), Path("x"))
    [rank0, _] = plan(spec, {})
    assert remote.agent_config(rank0, spec).ready_timeout_s == 3600


def test_the_hosts_file_sets_how_long_an_engine_may_be_silent_before_it_is_restarted_as_hung() -> None:
    spec = parse(LAB.replace('backend = "mlx"', 'backend = "mlx"\nlayers = 80\nstall_timeout_s = 900'), Path("x"))
    [rank0, _] = plan(spec, {})
    agent = remote.agent_config(rank0, spec)
    assert agent.stall_timeout_s == 900 and "--stall-timeout=900.0" in agent.to_argv()
    default = parse(LAB.replace('backend = "mlx"', 'backend = "mlx"\nlayers = 80'), Path("x"))
    assert remote.agent_config(plan(default, {})[0], default).stall_timeout_s == 120


def test_a_local_cluster_passes_its_stall_timeout_to_the_agent(tmp_path: Path) -> None:
    config = local.LocalClusterConfig(engine="sim", model="m", home=tmp_path, stall_timeout_s=900.0)
    agent, _ = local.launch_configs(config)
    assert agent.stall_timeout_s == 900.0
