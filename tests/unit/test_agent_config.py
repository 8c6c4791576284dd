"""The agent's configuration: the bundled model's defaults and argument validation."""

from __future__ import annotations

import pytest

from worker.agent import AgentConfig, _parse_args, bundled_defaults


def config(**extra: object) -> AgentConfig:
    return AgentConfig(engine="vllm", model="smollm2-135m-instruct", served_name="s", **extra)


def test_bundled_model_runs_fp32_on_vllm_unless_told_otherwise() -> None:
    engine = bundled_defaults(config(), "/cache/smol")
    assert engine.model == "/cache/smol" and engine.extra_args == ("--dtype", "float32")
    chosen = bundled_defaults(config(engine_args=("--dtype=bfloat16",)), "/cache/smol")
    assert chosen.extra_args == ("--dtype=bfloat16",)


def test_sim_options_must_be_key_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse_args(["--model", "m", "--engine", "sim", "--sim-option", "seed"])
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_out_of_range_settings_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse_args(["--model", "m", "--max-concurrency", "0"])
    assert "max_concurrency" in capsys.readouterr().err
