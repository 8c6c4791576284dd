"""Hosts-file validation: every mistake names the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.placement.hostsfile import HostsFileError, load, parse
from cluster.placement.plan import PlacementError, plan

REPO = Path(__file__).resolve().parents[2]
GOOD = """\
[router]
port = 8000

[[hosts]]
name = "a"
address = "10.0.0.2"

[[hosts]]
name = "b"
address = "10.0.0.3"
memory_gb = 64

[[models]]
name = "m"
source = "smollm2-135m-instruct"
replicas = 2
"""


def error_of(text: str) -> str:
    with pytest.raises(HostsFileError) as err:
        parse(text, Path("lab.toml"))
    return str(err.value)


def test_the_example_file_is_valid() -> None:
    spec = load(REPO / "deploy" / "hosts.example.toml")
    assert [h.label for h in spec.hosts] == ["studio-1", "mini-1"]
    assert [(a.host.label, a.model.name) for a in plan(spec)] == [
        ("studio-1", "smollm2-135m-instruct"),
        ("mini-1", "smollm2-135m-instruct"),
    ]


def test_good_file_defaults() -> None:
    spec = parse(GOOD, Path("lab.toml"))
    assert spec.hosts[0].port == 22 and spec.hosts[0].engine == "vllm" and spec.router.port == 8000


MISTAKES = [
    (
        "unknown key",
        GOOD.replace('address = "10.0.0.3"', 'adress = "10.0.0.3"'),
        "lab.toml:10: unknown key 'adress' in [[hosts]] #2",
    ),
    (
        "wrong type",
        GOOD.replace("port = 8000", 'port = "8000"'),
        "lab.toml:2: 'router.port': Input should be a valid integer",
    ),
    ("duplicate name", GOOD.replace('name = "b"', 'name = "a"'), "lab.toml:9: duplicate host name 'a' (also host #1)"),
    (
        "duplicate address",
        GOOD.replace('"10.0.0.3"', '"10.0.0.2"'),
        "lab.toml:10: duplicate host address '10.0.0.2' (also host #1)",
    ),
    (
        "unknown host",
        GOOD.replace("replicas = 2", 'hosts = ["a", "c"]'),
        "lab.toml:16: model 'm' is placed on unknown host 'c'",
    ),
    (
        "missing address",
        GOOD.replace('address = "10.0.0.2"\n', ""),
        "lab.toml:4: missing required key 'address' in [[hosts]] #1",
    ),
    (
        "bad engine",
        GOOD.replace("memory_gb = 64", 'engine = "tgi"'),
        "lab.toml:11: 'hosts.1.engine': Input should be 'vllm', 'mlx' or 'sim'",
    ),
    (
        "both replicas and hosts",
        GOOD.replace("replicas = 2", 'replicas = 2\nhosts = ["a"]'),
        "lab.toml:13: 'models.0': Value error, give either 'replicas' or 'hosts', not both",
    ),
    (
        "group of one",
        GOOD.replace("replicas = 2", 'mode = "pipeline"\nhosts = ["a"]'),
        "lab.toml:13: 'models.0': Value error, a pipeline group needs at least 2 hosts",
    ),
    (
        "vllm tensor group",
        GOOD.replace("replicas = 2", 'mode = "tensor"\nbackend = "vllm"'),
        "lab.toml:13: 'models.0': Value error, vllm-metal does not support tensor parallelism",
    ),
    (
        "bad mode",
        GOOD.replace("replicas = 2", 'mode = "expert"'),
        "lab.toml:16: 'models.0.mode': Input should be 'pipeline' or 'tensor'",
    ),
    (
        "bad memory fraction",
        GOOD.replace("port = 8000", "port = 8000\n\n[placement]\nmemory_fraction = 1.5"),
        "lab.toml:5: 'placement.memory_fraction': Input should be less than or equal to 1",
    ),
    ("not TOML", GOOD.replace("[router]", "[router"), "lab.toml:1: not valid TOML"),
    ("no models", GOOD.split("[[models]]")[0], "lab.toml: missing required key 'models' in the file"),
    (
        "bad policy",
        GOOD.replace("replicas = 2", 'replicas = 2\npolicy = "fastest"'),
        "lab.toml:17: 'models.0.policy': Input should be 'prefix', 'least_loaded' or 'round_robin'",
    ),
    (
        "on-demand group",
        GOOD.replace("replicas = 2", 'load = "on-demand"\nmode = "pipeline"'),
        "lab.toml:13: 'models.0': Value error, an on-demand model runs on one host per replica",
    ),
    (
        "keep_alive not a duration",
        GOOD.replace("replicas = 2", 'load = "on-demand"\nkeep_alive = "5 days"'),
        "lab.toml:17: 'models.0.keep_alive': Input should be a valid number",
    ),
    (
        "negative port",
        GOOD.replace("port = 8000", "port = -1"),
        "lab.toml:2: 'router.port': Input should be greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(("what", "text", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_name_file_line_and_key(what: str, text: str, message: str) -> None:
    assert error_of(text).startswith(message)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(HostsFileError, match=r"nope\.toml: cannot read"):
        load(tmp_path / "nope.toml")


def test_replicas_take_the_largest_hosts_first() -> None:
    spec = parse(GOOD.replace("replicas = 2", "replicas = 1"), Path("lab.toml"))
    assert [a.host.label for a in plan(spec)] == ["b"]  # 64 GB beats unknown


def test_too_many_replicas_say_how_many_hosts_are_missing() -> None:
    spec = parse(GOOD.replace("replicas = 2", "replicas = 5"), Path("lab.toml"))
    with pytest.raises(PlacementError, match=r"asks for 5 replica\(s\) but only 2 host\(s\) are free \(3 missing\)"):
        plan(spec)


def test_one_engine_per_host() -> None:
    text = GOOD.replace("replicas = 2", 'hosts = ["a"]') + '\n[[models]]\nname = "n"\nsource = "x"\nhosts = ["a"]\n'
    with pytest.raises(PlacementError, match="host 'a' is asked to serve both 'm' and 'n'"):
        plan(parse(text, Path("lab.toml")))


def test_a_models_parsers_are_names_or_off_and_reach_its_agent() -> None:
    from cluster.bringup.remote import agent_config

    text = '[[hosts]]\naddress = "10.0.0.2"\n\n[[models]]\nname = "q"\nsource = "org/q"\ntool_parser = "off"\n'
    spec = parse(text + 'reasoning_parser = "qwen3"\n', Path("lab.toml"))
    [assignment] = plan(spec)
    config = agent_config(assignment, spec)
    assert (config.tool_parser, config.reasoning_parser) == ("off", "qwen3")
    with pytest.raises(HostsFileError, match=r"lab.toml:7: 'models.0.tool_parser'"):
        parse(text.replace('"off"', '"x; rm -rf /"'), Path("lab.toml"))


def test_an_on_demand_models_keep_alive_reads_like_ollamas() -> None:
    for given, seconds in (("90", 90.0), ('"90s"', 90.0), ('"5m"', 300.0), ('"1.5h"', 5400.0)):
        spec = parse(GOOD.replace("replicas = 2", f'load = "on-demand"\nkeep_alive = {given}'), Path("lab.toml"))
        model = spec.models[0]
        assert (model.load, model.keep_alive, model.min_replicas, model.max_replicas) == ("on-demand", seconds, 0, 1)
