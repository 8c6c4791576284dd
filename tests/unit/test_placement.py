"""Placement by memory on hand-written lab descriptions: replicas, shard groups, layer splits, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.placement.hostsfile import parse
from cluster.placement.plan import Assignment, PlacementError, plan
from cluster.placement.sizing import ModelFacts
from worker.shared.launch import AgentConfig

# Two 512 GB Mac Studios and two 96 GB ones; 80 % usable (set here: the default follows the Mac's report):
# 409.6 GB and 76.8 GB.
LAB = """\
[placement]
memory_fraction = 0.8

[[hosts]]
name = "ultra-1"
address = "10.0.0.2"
memory_gb = 512

[[hosts]]
name = "ultra-2"
address = "10.0.0.3"
memory_gb = 512

[[hosts]]
name = "studio-1"
address = "10.0.0.4"
memory_gb = 96

[[hosts]]
name = "studio-2"
address = "10.0.0.5"
memory_gb = 96
"""


def model(name: str, size_gb: float, extra: str = "") -> str:
    return f'\n[[models]]\nname = "{name}"\nsource = "org/{name}"\nsize_gb = {size_gb}\n{extra}'


def placed(text: str, facts: dict[str, ModelFacts] | None = None) -> list[Assignment]:
    return plan(parse(text, Path("lab.toml")), facts)


def hosts_of(assignments: list[Assignment], name: str) -> list[str]:
    return [a.host.label for a in assignments if a.model.name == name]


def test_a_small_model_takes_the_smallest_host_that_holds_it() -> None:
    [one] = placed(LAB + model("m30", 30))
    assert one.host.label == "studio-1" and one.group is None
    assert one.need_gb == pytest.approx(33.0) and one.usable_gb == pytest.approx(76.8)
    assert "fits one host" in one.why


def test_a_350_gb_model_fits_one_512_gb_mac() -> None:
    [one] = placed(LAB + model("m350", 350))
    assert one.host.label == "ultra-1" and one.group is None  # 385 GB needed, 409.6 usable


def test_a_700_gb_model_becomes_a_pipeline_group_over_both_512_gb_macs() -> None:
    facts = {"m700": ModelFacts(layers=80)}
    group = placed(LAB + model("m700", 700), facts)
    assert [(a.host.label, a.rank) for a in group] == [("ultra-1", 0), ("ultra-2", 1)]
    plan_ = group[0].group
    assert plan_ is not None and (plan_.mode, plan_.size, plan_.layers) == ("pipeline", 2, (40, 40))
    assert [a.routed for a in group] == [True, False]  # the router talks to rank 0 only
    assert sum(a.need_gb or 0 for a in group) == pytest.approx(770.0)
    assert "more than any free host (410 GB usable): 2-host pipeline group" in group[0].why


def test_a_model_too_big_for_the_whole_lab_says_how_much_is_missing() -> None:
    with pytest.raises(PlacementError) as caught:
        placed(LAB + model("m1200", 1200))
    assert str(caught.value) == (
        "model 'm1200' needs 1,320 GB (weights 1,200 GB + KV reserve 120 GB) but the 4 free host(s) hold "
        "973 GB usable together: 347 GB missing"
    )


def test_several_models_large_first_and_small_ones_keep_off_the_big_hosts() -> None:
    assignments = placed(LAB + model("m30", 30) + model("m700", 700) + model("m60", 60))
    assert hosts_of(assignments, "m700") == ["ultra-1", "ultra-2"]
    assert hosts_of(assignments, "m30") == ["studio-2"] and hosts_of(assignments, "m60") == ["studio-1"]


def test_pipeline_layers_follow_each_hosts_memory() -> None:
    text = LAB + model("m400", 400, 'hosts = ["ultra-1", "studio-1"]\nmode = "pipeline"\n')
    group = placed(text, {"m400": ModelFacts(layers=30)})
    plan_ = group[0].group
    assert plan_ is not None and plan_.layers == (25, 5)  # 409.6 : 76.8 of 30 layers, largest remainder
    assert [round(s, 3) for s in plan_.shares] == [0.842, 0.158]


def test_a_pinned_group_that_is_too_small_is_refused() -> None:
    text = LAB + model("m200", 200, 'hosts = ["studio-1", "studio-2"]\nmode = "pipeline"\n')
    missing = r"its pinned hosts hold 154 GB usable as a pipeline group \(66 GB missing\)"
    with pytest.raises(PlacementError, match=missing):
        placed(text)


SMOLLM2 = ModelFacts(weights_gb=0.54, layers=30, heads=9, kv_heads=3, hidden=576, intermediate=1536)


def smollm2_on(*hosts: str, mode: str = "tensor", source: str = "smollm2-135m-instruct") -> str:
    listed = ", ".join(f'"{h}"' for h in hosts)
    return f'\n[[models]]\nname = "s"\nsource = "{source}"\nhosts = [{listed}]\nmode = "{mode}"\n'


SMALL_LAB = "".join(
    f'\n[[hosts]]\nname = "h{i}"\naddress = "10.213.7.{10 + i}"\nengine = "mlx"\nmemory_gb = 24\n' for i in (1, 2, 3)
)


def test_a_three_host_tensor_group_when_heads_divide() -> None:
    text = SMALL_LAB + smollm2_on("h1", "h2", "h3")
    group = placed(text, {"s": SMOLLM2})
    assert [(a.host.label, a.rank) for a in group] == [("h1", 0), ("h2", 1), ("h3", 2)]
    plan_ = group[0].group
    assert plan_ is not None and (plan_.mode, plan_.backend, plan_.transport) == ("tensor", "mlx", "ring")


def test_a_two_host_tensor_group_is_refused_because_9_heads_do_not_divide() -> None:
    text = SMALL_LAB + smollm2_on("h1", "h2")
    with pytest.raises(PlacementError) as caught:
        placed(text, {"s": SMOLLM2})
    assert str(caught.value) == (
        "model 's' cannot run as a 2-host tensor group: attention heads 9, KV heads 3 do not divide by 2 "
        "(group sizes that divide: 3)"
    )


def test_tensor_mode_without_the_models_config_is_refused_not_guessed() -> None:
    text = SMALL_LAB + smollm2_on("h1", "h2", "h3", source="org/s")
    with pytest.raises(PlacementError, match=r"needs the model's config\.json"):
        placed(text)


def test_a_group_needs_an_engine_that_shards() -> None:
    text = LAB.replace("memory_gb = 96\n", 'memory_gb = 96\nengine = "sim"\n') + model(
        "m100", 100, 'hosts = ["studio-1", "studio-2"]\nmode = "pipeline"\n'
    )
    with pytest.raises(PlacementError, match='groups run on mlx or vllm: set backend = "mlx" or "vllm"'):
        placed(text)


def test_unknown_sizes_keep_the_old_rule_largest_host_first() -> None:
    text = LAB + '\n[[models]]\nname = "x"\nsource = "org/x"\nreplicas = 2\n'
    assert hosts_of(placed(text), "x") == ["ultra-1", "ultra-2"]


def test_reported_memory_is_used_when_the_file_gives_none() -> None:
    text = SMALL_LAB.replace("memory_gb = 24\n", "") + model("m30", 30)
    spec = parse(text, Path("lab.toml"))
    assignments = plan(spec, memory_gb={"h1": 24, "h2": 24, "h3": 24})
    assert hosts_of(assignments, "m30") == ["h1", "h2"]  # 33 GB > 19.2 usable: a 2-host pipeline group
    assert "2-host pipeline group" in assignments[0].why


def test_a_group_ranks_agent_command_line_carries_the_whole_group(tmp_path: Path) -> None:
    from cluster.bringup.remote import agent_config

    text = SMALL_LAB.replace('address = "10.213.7.12"', 'address = "10.213.7.12"\ngroup_address = "192.168.5.2"')
    for i, peers in (
        (1, '{ h2 = "rdma_en5", h3 = "rdma_en4" }'),
        (2, '{ h1 = "rdma_en5", h3 = "rdma_en3" }'),
        (3, '{ h1 = "rdma_en4", h2 = "rdma_en3" }'),
    ):
        text = text.replace(f'name = "h{i}"\n', f'name = "h{i}"\nrdma_devices = {peers}\n')
    text += smollm2_on("h1", "h2", "h3", mode="pipeline").replace("\n[[models]]", '\n[[models]]\ntransport = "jaccl"')
    spec = parse(text, Path("lab.toml"))
    member = plan(spec, {"s": SMOLLM2})[1]
    config = AgentConfig.from_argv(agent_config(member, spec).to_argv())  # what the agent on h2 makes of it
    role = config.group
    assert role is not None and (role.name, role.rank, role.mode, role.backend) == ("s#1", 1, "pipeline", "mlx")
    assert role.members == ("10.213.7.11:52100", "192.168.5.2:52100", "10.213.7.13:52100")  # group_address
    assert role.peers == ("10.213.7.11:50051", "10.213.7.12:50051", "10.213.7.13:50051")  # agents
    assert role.layers == (10, 10, 10) and role.transport == "jaccl"
    assert role.rdma == ((None, "rdma_en5", "rdma_en4"), ("rdma_en5", None, "rdma_en3"), ("rdma_en4", "rdma_en3", None))


def test_a_hosts_files_numeric_sim_options_reach_the_agent_as_text() -> None:
    from cluster.bringup.remote import agent_config

    text = LAB.replace(
        'name = "studio-1"\n', 'name = "studio-1"\nengine = "sim"\nsim_options = { seed = 3, kv-blocks = 600 }\n'
    )
    spec = parse(text + model("m30", 30), Path("lab.toml"))
    [one] = plan(spec)
    config = AgentConfig.from_argv(agent_config(one, spec).to_argv())
    assert config.sim_options == (("kv-blocks", "600"), ("seed", "3")) and config.worker_id == "studio-1"


def test_a_hosts_engine_python_reaches_the_agent_and_the_engine_expands_it() -> None:
    from cluster.bringup.remote import agent_config
    from worker.engines.base import EngineConfig
    from worker.engines.vllm import VllmEngine

    text = LAB.replace(
        'name = "studio-1"\n', 'name = "studio-1"\nengine_python = "~/src/vllm-metal/.venv-vllm-metal/bin/python"\n'
    )
    spec = parse(text + model("m30", 30), Path("lab.toml"))
    [one] = plan(spec)
    config = AgentConfig.from_argv(agent_config(one, spec).to_argv())
    assert config.engine_python == "~/src/vllm-metal/.venv-vllm-metal/bin/python"
    engine = VllmEngine(platform="darwin")
    python = engine.python(EngineConfig(kind="vllm", model="m", served_name="m", python=config.engine_python))
    assert python == str(Path.home() / "src/vllm-metal/.venv-vllm-metal/bin/python")
    assert engine.python(EngineConfig(kind="vllm", model="m", served_name="m")).endswith("/.venv-vllm-metal/bin/python")


def test_usable_memory_is_the_macs_own_report_unless_the_hosts_file_says() -> None:
    memory, metal = {"a": 96.0, "b": 64.0}, {"a": 72.0}  # Metal recommends 72 of a's 96 GB; b reports none

    def usable(host: str, a_extra: str = "") -> float | None:
        text = (
            f'[[hosts]]\nname = "a"\naddress = "10.0.0.2"\n{a_extra}\n'
            '[[hosts]]\nname = "b"\naddress = "10.0.0.3"\n' + model("m", 1, f'hosts = ["{host}"]')
        )
        [one] = plan(parse(text, Path("lab.toml")), None, memory, metal)
        return one.usable_gb

    assert usable("a") == pytest.approx(72.0)  # the Mac's own figure
    assert usable("b") == pytest.approx(48.0)  # no report: 64 GB x the 0.75 default
    assert usable("a", "memory_fraction = 0.5") == pytest.approx(48.0)  # the hosts file wins
    assert usable("a", "memory_gb = 80") == pytest.approx(60.0)


MLX_PAIR = """
[[hosts]]
name = "big"
address = "10.0.0.2"
memory_gb = 192
engine = "mlx"
[[hosts]]
name = "small"
address = "10.0.0.3"
memory_gb = 96
engine = "mlx"
[[models]]
name = "m"
source = "org/m"
hosts = ["big", "small"]
mode = "pipeline"
"""


def test_an_architecture_mlx_lm_cannot_pipeline_is_refused_at_plan_naming_it() -> None:
    with pytest.raises(PlacementError, match="cannot split architecture 'gemma3' into a pipeline"):
        placed(MLX_PAIR, {"m": ModelFacts(layers=40, model_type="gemma3", mlx_pipeline="none")})


def test_an_architecture_with_its_own_even_pipeline_gets_an_even_split_not_a_memory_one() -> None:
    planned = placed(MLX_PAIR, {"m": ModelFacts(layers=40, model_type="x", mlx_pipeline="planned")})
    even = placed(MLX_PAIR, {"m": ModelFacts(layers=40, model_type="x", mlx_pipeline="even")})
    assert planned[0].group is not None and planned[0].group.layers == (27, 13)  # by memory, 2:1
    assert even[0].group is not None and even[0].group.layers == (20, 20)


def test_the_hosts_files_layers_split_a_group_whose_config_is_nowhere_in_reach() -> None:
    [first, _] = placed(MLX_PAIR.replace('mode = "pipeline"', 'mode = "pipeline"\nlayers = 30'))
    assert first.group is not None and first.group.layers == (20, 10)


def test_the_installed_mlx_lm_is_what_says_which_architectures_pipeline() -> None:
    pytest.importorskip("mlx_lm")
    from worker.shared.mlx_support import pipeline_support

    assert pipeline_support("llama") == "planned"  # the mlx engine's own pipelined llama
    assert pipeline_support("qwen2") == "planned"  # mlx-lm's PipelineMixin (missing before 0.32)
    assert pipeline_support("gemma3") == "none" and pipeline_support("no-such-type") == ""
