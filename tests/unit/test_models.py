"""Model sources and the two conversion traps (pure file operations, no conversion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.shared.models import ModelError, ensure_weight_index, fix_config, resolve


def test_config_fix_drops_quantization_and_lifts_rope_theta(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "quantization_config": {"quant_method": "gguf"},
                "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
            }
        )
    )
    fix_config(path)
    config = json.loads(path.read_text())
    assert "quantization_config" not in config
    assert config["rope_theta"] == 100000.0


def test_hub_ids_and_paths_pass_through_unchanged(tmp_path: Path) -> None:
    hub = resolve("Qwen/Qwen3-0.6B")
    assert hub.path_or_id == "Qwen/Qwen3-0.6B" and hub.served_name == "Qwen/Qwen3-0.6B" and not hub.bundled
    local = resolve(str(tmp_path), served_name="mine")
    assert local.path_or_id == str(tmp_path) and local.served_name == "mine"


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve(str(tmp_path / "nope"))


def test_unprepared_bundled_model_says_how_to_prepare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ORCHARD_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="cluster models prepare"):
        resolve("smollm2-135m-instruct")


def test_a_single_file_checkpoint_gets_the_weight_index_mlx_pipelines_read(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file(
        {"model.layers.0.w": np.zeros(2, np.float32), "model.norm.weight": np.ones(2, np.float32)},
        str(tmp_path / "model.safetensors"),
    )
    ensure_weight_index(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"model.layers.0.w": "model.safetensors", "model.norm.weight": "model.safetensors"}
    assert index["metadata"]["total_size"] == (tmp_path / "model.safetensors").stat().st_size
    ensure_weight_index(tmp_path)  # idempotent
    assert not list(tmp_path.glob("*.tmp*"))
