"""Preparing the bundled model: two processes at once, one correct folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

pytestmark = pytest.mark.slow


def test_two_concurrent_prepares_yield_one_valid_folder(tmp_path: Path) -> None:
    env = {**os.environ, "ORCHARD_CACHE": str(tmp_path)}
    argv = [sys.executable, "-m", "cluster.cli", "models", "prepare"]
    runs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    folder = tmp_path / "models" / "smollm2-135m-instruct"
    assert sorted(p.name for p in tmp_path.joinpath("models").iterdir() if not p.name.endswith(".lock")) == [
        folder.name
    ]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["rope_theta"] == 100000.0
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    assert "model.embed_tokens.weight" in names  # the tied embedding the engines rebuild lm_head from
    assert (folder / "tokenizer.json").exists() and (folder / "chat_template.jinja").exists()
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "is ready" in again.stdout
