"""The model store's pure parts: which files a pipeline rank needs, who pulls each file from whom, a file checked
against the hash its source publishes (and remembered), the file server's ranges."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from cluster.store.fanout import Holder, sources, wanted
from cluster.store.ranks import files_for_layers
from worker.shared.layers import rank_layers
from worker.shared.store.folder import ModelFolder
from worker.shared.store.manifest import Manifest, ModelFile, problem
from worker.shared.store.serve import range_start

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


def test_the_plan_chains_each_file_through_the_hosts_that_need_it() -> None:
    hosts = [
        Holder("h1", "http://h1", frozenset({"a"}), ("b",)),
        Holder("h2", "http://h2", frozenset(), ("a", "b")),
        Holder("h3", "http://h3", frozenset(), ("a", "b")),
        Holder("h4", "", frozenset(), ("b",)),  # serves nobody (it failed to start its server)
    ]
    plan = sources("HEAD", hosts, ["a", "b"])
    assert plan == {
        "h1": {"b": ("HEAD",)},
        "h2": {"a": ("http://h1", "HEAD"), "b": ("http://h1", "HEAD")},  # a from its holder, b down the chain
        "h3": {"a": ("http://h2", "HEAD"), "b": ("http://h2", "HEAD")},
        "h4": {"b": ("http://h3", "HEAD")},
    }
    baseline = sources("HEAD", hosts, ["a", "b"], chain=False)
    assert {urls for files in baseline.values() for urls in files.values()} == {("HEAD",)}


def test_a_rank_wants_its_weight_files_and_every_small_file() -> None:
    files = ["config.json", "model-1.safetensors", "model-2.safetensors", "tokenizer.json"]
    assert wanted(files, None, "h1") == tuple(files)
    only = {"h1": frozenset({"model-2.safetensors"})}
    assert wanted(files, only, "h1") == ("config.json", "model-2.safetensors", "tokenizer.json")
    assert wanted(files, only, "h2") == tuple(files)


def test_a_folder_remembers_its_checks_and_checks_again_after_a_write(tmp_path: Path) -> None:
    folder = ModelFolder(tmp_path / "m")
    folder.path.mkdir()
    data = b"weights" * 1000
    (folder.path / "w.safetensors").write_bytes(data)
    file = ModelFile(path="w.safetensors", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert not folder.verified(file, rehash=False)  # never checked
    assert folder.verified(file) and folder.verified(file, rehash=False)  # checked once, remembered
    with (folder.path / "w.safetensors").open("r+b") as out:  # same size, a byte changed
        out.write(b"X")
    assert not folder.verified(file, rehash=False) and not folder.verified(file)


def test_a_git_blob_sha1_is_fed_in_pieces(tmp_path: Path) -> None:
    text = b'{"model_type": "llama"}\n' * 100
    (tmp_path / "config.json").write_bytes(text)
    git = subprocess.run(
        ["git", "hash-object", str(tmp_path / "config.json")], capture_output=True, text=True, check=True
    ).stdout.strip()
    digest = ModelFile(path="config.json", size=len(text), git_sha1=git).digest()
    for start in range(0, len(text), 7):
        digest.update(text[start : start + 7])
    assert digest.matches()


@pytest.mark.parametrize(
    ("header", "start"),
    [("", 0), ("bytes=0-", 0), ("bytes=1024-", 1024), ("bytes=0-99", None), ("items=5-", None), ("bytes=-5", None)],
)
def test_the_file_server_reads_only_open_ended_byte_ranges(header: str, start: int | None) -> None:
    assert range_start(header) == start


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a//b", "./a", "a/../../b", ".orchard/manifest.json", "a\\b", ""]
)
def test_a_manifest_names_only_files_inside_the_model_folder(path: str) -> None:
    with pytest.raises(ValueError, match="not a file inside a model folder"):
        ModelFile(path=path, size=1)


def test_a_manifest_takes_nested_files_and_refuses_a_source_or_revision_that_is_no_folder_name() -> None:
    assert ModelFile(path="tokenizer/vocab.json", size=1).path == "tokenizer/vocab.json"
    for source, revision in ((".", "r1"), ("..", "r1"), ("org/m", "../r1"), ("org/m", ".hidden")):
        with pytest.raises(ValueError, match="not usable as a folder name"):
            Manifest(source=source, revision=revision, files=())
