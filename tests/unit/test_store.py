"""The model store's pure parts (issue 29, in progress): which files a pipeline rank needs, and a file checked
against the hash its source publishes."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from cluster.store.ranks import files_for_layers
from worker.store.manifest import ModelFile, problem
from worker.shared.layers import rank_layers

WEIGHT_MAP = {
    "model.embed_tokens.weight": "model-00001-of-00003.safetensors",
    "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00003.safetensors",
    "model.layers.1.mlp.down_proj.weight": "model-00001-of-00003.safetensors",
    "model.layers.2.mlp.down_proj.weight": "model-00002-of-00003.safetensors",
    "model.layers.3.input_layernorm.weight": "model-00002-of-00003.safetensors",
    "model.layers.4.mlp.up_proj.weight": "model-00003-of-00003.safetensors",
    "model.layers.5.mlp.up_proj.weight": "model-00003-of-00003.safetensors",
    "model.norm.weight": "model-00003-of-00003.safetensors",
}


def test_a_pipeline_rank_needs_the_files_of_its_layers_and_of_the_shared_tensors() -> None:
    split = [2, 4]  # rank 0 holds the last 2 layers (mlx-lm's convention), rank 1 the first 4
    assert rank_layers(split, 0) == (4, 6) and rank_layers(split, 1) == (0, 4)
    assert files_for_layers(WEIGHT_MAP, *rank_layers(split, 0)) == {
        "model-00001-of-00003.safetensors",  # the embeddings, which every rank loads
        "model-00003-of-00003.safetensors",
    }
    assert files_for_layers(WEIGHT_MAP, *rank_layers(split, 1)) == {
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",  # the final norm
    }


def test_a_file_is_checked_against_its_sha256_or_its_git_blob_sha1(tmp_path: Path) -> None:
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    weights.write_bytes(b"\x00" * 5000)
    config.write_text('{"model_type": "qwen2"}')
    git = subprocess.run(["git", "hash-object", str(config)], capture_output=True, text=True, check=True).stdout.strip()
    lfs = ModelFile(path="model.safetensors", size=5000, sha256=hashlib.sha256(b"\x00" * 5000).hexdigest())
    plain = ModelFile(path="config.json", size=config.stat().st_size, git_sha1=git)
    assert problem(tmp_path, lfs) is None and problem(tmp_path, plain) is None
    weights.write_bytes(b"\x01" + b"\x00" * 4999)
    assert problem(tmp_path, lfs) == "model.safetensors: content differs from the published hash"
    assert (
        problem(tmp_path, plain.model_copy(update={"size": 3}))
        == f"config.json: {config.stat().st_size} bytes, expected 3"
    )
    assert problem(tmp_path, ModelFile(path="missing.bin", size=1)) == "missing.bin: missing"
