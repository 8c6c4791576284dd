"""The launch configs (worker/shared/launch.py): the one owner of the agent's and the router's command lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.agent import bundled_defaults, stored_source
from worker.shared.launch import AgentConfig, GroupRole, LaunchConfigError, RouterConfig
from worker.shared.models import BUNDLED_NAME
from worker.shared.store.folder import ModelFolder
from worker.shared.store.manifest import Manifest


def config(**extra: object) -> AgentConfig:
    return AgentConfig(engine="vllm", model="smollm2-135m-instruct", served_name="s", **extra)


def every_agent_field() -> AgentConfig:
    """No field at its default, so a flag dropped by to_argv or from_argv shows in the round trip."""
    group = GroupRole(
        name="big#1",
        rank=1,
        mode="pipeline",
        backend="mlx",
        transport="jaccl",
        members=("10.0.0.2:52100", "10.0.0.3:52100"),
        peers=("10.0.0.2:50051", "10.0.0.3:50051"),
        layers=(20, 10),
        rdma=((None, "rdma_en5"), ("", None)),
    )
    return AgentConfig(
        listen="0.0.0.0:50099",
        engine="mlx",
        model="/models/big",
        served_name="big",
        worker_id="studio-2",
        engine_args=("--dtype=float16", "--enforce-eager"),
        engine_python="/venv/bin/python",
        max_model_len=8192,
        kv_cache_gib=2.5,
        sim_options=(("seed", "7"), ("kv-blocks", "600")),
        max_concurrency=12,
        ready_timeout_s=123.5,
        stall_timeout_s=45.0,
        log_dir="~/lab/logs",
        port_file="/tmp/port",
        group=group,
        tls_dir="~/lab/tls",
        max_body_bytes=1 << 20,
        need_gb=4.5,
    )


def test_agent_config_round_trips_through_its_command_line() -> None:
    original = every_agent_field()
    embedding = AgentConfig(model="m", task="embed", tool_parser="off", reasoning_parser="qwen3")  # vLLM: default
    defaults = AgentConfig(model="m")
    changed = {
        name
        for name in AgentConfig.model_fields
        for config in (original, embedding)
        if getattr(config, name) != getattr(defaults, name)
    }
    assert changed == set(AgentConfig.model_fields)  # the test covers every field
    assert AgentConfig.from_argv(original.to_argv()) == original
    assert AgentConfig.from_argv(embedding.to_argv()) == embedding
    with pytest.raises(LaunchConfigError, match="only the vllm engine serves embeddings"):
        AgentConfig.from_argv(["--model", "m", "--engine", "sim", "--task", "embed"])


def test_router_config_round_trips_through_its_command_line() -> None:
    original = RouterConfig(
        listen="0.0.0.0:9000",
        workers=("10.0.0.2:50051", "10.0.0.3:50051"),
        policy="least_loaded",
        model_policies=(("qwen=3", "round_robin"), ("llama", "prefix")),
        max_body_bytes=1 << 20,
        max_attempts=3,
        request_timeout_s=60.5,
        accept_timeout_s=1.5,
        gateway_db="/root/.orchard/gateway.db",
        no_auth=True,
        max_queue=12,
        shutdown_grace_s=5.0,
        gap_timeout_s=4.5,
        handover="/root/.orchard/router.sock",
        tls_dir="/root/.orchard/tls/router",
        ca_dir="/root/.orchard/ca",
        demand="/root/.orchard/demand-0123456789ab.json",
        tls_cert="/etc/orchard/endpoint.pem",
        tls_key="/etc/orchard/endpoint.key",
        max_connections=99,
        log_format="json",
        models=("qwen=3", "llama"),
    )
    defaults = RouterConfig(workers=("x:1",))
    assert {n for n in RouterConfig.model_fields if getattr(original, n) != getattr(defaults, n)} == set(
        RouterConfig.model_fields
    )
    assert RouterConfig.from_argv(original.to_argv()) == original


def test_command_runs_the_program_with_the_given_interpreter() -> None:
    command = every_agent_field().command("/Users/lab/orchard/.venv/bin/python")
    assert command[:3] == ["/Users/lab/orchard/.venv/bin/python", "-m", "worker.agent"]
    assert RouterConfig(workers=("a:1",)).command()[1:3] == ["-m", "cluster.router"]


def test_served_name_defaults_to_the_model() -> None:
    assert AgentConfig.from_argv(["--model", "org/model"]).served_name == "org/model"


def test_bundled_model_runs_fp32_on_vllm_unless_told_otherwise() -> None:
    engine = bundled_defaults(config(), "/cache/smol")
    assert engine.model == "/cache/smol" and engine.extra_args == ("--dtype", "float32")
    chosen = bundled_defaults(config(engine_args=("--dtype=bfloat16",)), "/cache/smol")
    assert chosen.extra_args == ("--dtype=bfloat16",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "m", "--engine", "sim", "--sim-option", "seed"], "expected KEY=VALUE"),
        (["--model", "m", "--max-concurrency", "0"], "max_concurrency"),
        (["--model", "m", "--engine", "cuda"], "invalid choice: 'cuda'"),
        (["--model", "m", "--group-name", "g#1", "--group-member", "a:1"], "one --group-member and one --group-peer"),
        (
            ["--model", "m", "--group-name", "g", "--group-rank", "2", "--group-member", "a:1", "--group-peer", "a:2"],
            "outside the group of 1",
        ),
        (["--model", "m", "--listen", "0.0.0.0:50051"], "needs --tls-dir"),
    ],
)
def test_bad_agent_arguments_are_refused_with_the_flag_named(argv: list[str], message: str) -> None:
    with pytest.raises(LaunchConfigError, match=message):
        AgentConfig.from_argv(argv)


def test_bad_router_arguments_are_refused() -> None:
    with pytest.raises(LaunchConfigError, match="expected HOST:PORT"):
        RouterConfig.from_argv(["--listen", "8000", "--worker", "a:1"])
    with pytest.raises(LaunchConfigError, match="invalid choice"):
        RouterConfig.from_argv(["--worker", "a:1", "--model-policy", "m=fastest"])
    with pytest.raises(LaunchConfigError, match="required"):
        RouterConfig.from_argv([])
    assert "mutual TLS only" in (RouterConfig.from_argv(["--worker", "10.0.0.2:50051"]).plaintext_refusal() or "")
    assert RouterConfig.from_argv(["--worker", "127.0.0.1:50051"]).plaintext_refusal() is None
    with pytest.raises(LaunchConfigError, match="come together"):
        RouterConfig.from_argv(["--worker", "a:1", "--tls-cert", "/c.pem"])


def test_the_agent_program_prints_usage_and_exits_2_on_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.agent import main

    with pytest.raises(SystemExit) as stopped:
        main(["--model", "m", "--max-concurrency", "0"])
    assert stopped.value.code == 2 and "usage: orchard-worker" in capsys.readouterr().err


def test_engine_states_cross_the_wire_and_unknown_ones_read_as_none() -> None:
    from worker.shared.states import EngineState

    assert all(EngineState.from_wire(state.to_wire()) is state for state in EngineState)
    assert EngineState.from_wire(0) is None and EngineState.from_wire(99) is None


def test_every_flag_is_declared_once_on_its_field_and_only_changed_values_are_written() -> None:
    """A field is its flag's one owner (name, type, default, help): argv and parser are derived from it."""
    from worker.shared import flags
    from worker.shared.launch import _router_parser

    agent_flags = {name for name, _, _ in flags.flags(AgentConfig)}
    assert agent_flags == set(AgentConfig.model_fields) - {"group"}  # the group's flags: _group_argv
    assert {name for name, _, _ in flags.flags(RouterConfig)} == set(RouterConfig.model_fields)
    names = [flag.name for kind in (AgentConfig, RouterConfig) for _, _, flag in flags.flags(kind)]
    assert all(name.startswith("--") for name in names)
    assert RouterConfig(workers=("a:1",)).to_argv() == ["--worker=a:1"]  # every other field at its default
    assert RouterConfig.from_argv(["--worker", "a:1"]).max_queue == RouterConfig.model_fields["max_queue"].default
    assert "(default: 256)" in _router_parser().format_help()
    with pytest.raises(LaunchConfigError, match=r"--max-queue.*invalid int"):
        RouterConfig.from_argv(["--worker", "a:1", "--max-queue", "many"])


def test_the_bundled_model_copied_by_the_store_is_known_by_its_manifest(tmp_path: Path) -> None:
    folder = ModelFolder(tmp_path / "smollm2-135m-instruct" / "0123")
    folder.write_manifest(Manifest(source=BUNDLED_NAME, revision="0123", files=()))
    assert stored_source(str(folder.path)) == BUNDLED_NAME  # so it runs in fp32 on vLLM, as the bundled name does
    assert stored_source(str(tmp_path)) == "" and stored_source("org/model") == ""
