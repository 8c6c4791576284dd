"""Secrets given as engine arguments stay off the engine's command line (vLLM logs its arguments; `ps` shows
them): vLLM's hub token moves to the variable vLLM reads it from, an engine API key and any other secret are
refused, and nothing Orchard shows (the engine log's start line, the engine's state detail) holds a secret's value."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from worker.engines.base import EngineConfig, GroupRole
from worker.engines.secrets import move_secrets
from worker.engines.vllm import NOT_SECRET, SECRET_ENV, VllmEngine
from worker.shared import procs
from worker.shared.states import EngineState
from worker.supervisor import EngineSupervisor, SupervisorPolicy


def vllm_plan(*extra: str, group: GroupRole | None = None) -> tuple[list[str], dict[str, str]]:
    config = EngineConfig("vllm", "/models/smol", "smol", extra_args=extra, group=group)
    plan = VllmEngine(platform="linux").plan(config, port=9000)
    return list(plan.argv), plan.env


def test_vllms_hub_token_moves_from_its_command_line_to_its_environment() -> None:
    argv, env = vllm_plan("--hf-token=hf_abc", "--max-num-seqs", "8")
    assert not {"--hf-token=hf_abc"} & set(argv) and env["HF_TOKEN"] == "hf_abc"
    assert argv[argv.index("--max-num-seqs") + 1] == "8"  # everything else passes unchanged


def test_a_secret_flag_written_with_underscores_moves_too() -> None:
    argv, env = vllm_plan("--hf_token", "hf-2")
    assert env["HF_TOKEN"] == "hf-2" and not any("hf-2" in arg for arg in argv)


@pytest.mark.parametrize("given", [("--api-key", "sk-live-1"), ("--api_key=sk-live-1",)])
def test_an_engine_api_key_is_refused_since_its_own_agent_could_not_call_it(given: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="cluster keys create") as refused:
        vllm_plan(*given)
    assert "sk-live-1" not in str(refused.value)


def test_a_pipeline_groups_server_gets_its_secrets_through_the_environment_too() -> None:
    role = GroupRole(
        name="big#1",
        rank=0,
        backend="vllm",
        members=("10.0.0.2:52100", "10.0.0.3:52100"),
        peers=("10.0.0.2:50051", "10.0.0.3:50051"),
    )
    argv, env = vllm_plan("--hf-token", "hf_group", group=role)
    assert "hf_group" not in argv and env["HF_TOKEN"] == "hf_group"


def test_flags_that_only_look_secret_and_a_bare_hf_token_stay_on_the_command_line() -> None:
    given = ["--long-prefill-token-threshold", "512", "--return-tokens-as-token-ids", "--hf-token", "--enforce-eager"]
    argv, env = vllm_plan(*given)
    assert argv[-len(given) :] == given and "HF_TOKEN" not in env  # bare --hf-token: the stored login, no secret


def test_a_secret_vllm_takes_only_on_its_command_line_is_refused_naming_the_flag_not_the_value() -> None:
    with pytest.raises(ValueError, match="--kv-connector-secret holds a secret") as refused:
        vllm_plan("--kv-connector-secret", "s3cr3t")
    assert "s3cr3t" not in str(refused.value)


def test_several_hub_tokens_are_refused_since_the_variable_holds_one() -> None:
    with pytest.raises(ValueError, match="HF_TOKEN") as refused:
        vllm_plan("--hf-token", "k-one", "k-two")
    assert "k-one" not in str(refused.value) and "k-two" not in str(refused.value)


def test_every_secret_flag_vllm_reads_from_the_environment_is_one_move_secrets_recognises() -> None:
    for flag, variable in SECRET_ENV.items():
        assert move_secrets([flag, "v"], SECRET_ENV, NOT_SECRET, "vLLM") == ([], {variable: "v"})


async def test_a_refused_configuration_fails_the_engine_at_once_and_its_detail_shows_no_secret(tmp_path: Path) -> None:
    config = EngineConfig("vllm", "/models/smol", "smol", extra_args=("--ssl-key-password", "pw-123"))
    policy = SupervisorPolicy(backoff_initial_s=30.0)  # a retry would wait this long: FAILED comes before it
    supervisor = EngineSupervisor(VllmEngine(platform="linux"), config, tmp_path, policy=policy, port=1)
    await supervisor.start()
    try:
        for _ in range(100):
            if supervisor.state is EngineState.FAILED:
                break
            await asyncio.sleep(0.02)
        assert supervisor.state is EngineState.FAILED and supervisor.crashes == 0
        assert "--ssl-key-password" in supervisor.detail and "pw-123" not in supervisor.detail
    finally:
        await supervisor.stop()


def test_the_engine_logs_start_line_would_hide_a_secret_left_on_any_command_line() -> None:
    argv, _ = vllm_plan("--hf-token", "hf-live-1")
    shown = " ".join(procs.redacted([*argv, "--engine-arg=--hf-token=hf_x"]))
    assert "hf-live-1" not in shown and "hf_x" not in shown and sys.executable in shown
