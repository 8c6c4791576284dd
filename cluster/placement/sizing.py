"""What a model needs, read from its files on the head node: weight bytes and the shape facts placement uses.

Weights are the checkpoint's files as they are (`*.safetensors`; a quantized MLX checkpoint is already small,
so its files are its size). Shape facts come from `config.json`. A model whose files are not here (a hub id not
downloaded yet, a path on another machine) is "unknown": give `size_gb` in the hosts file, or placement treats
it as fitting any host.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from worker.models import bundled_dir, is_bundled, is_prepared


@dataclass(frozen=True)
class ModelFacts:
    weights_gb: float | None = None
    layers: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    hidden: int | None = None
    intermediate: int | None = None

    def tensor_divisors(self) -> dict[str, int]:
        """The sizes tensor parallelism splits: each must divide by the group size."""
        named = {"attention heads": self.heads, "KV heads": self.kv_heads, "hidden size": self.hidden,
                 "MLP size": self.intermediate}  # fmt: skip
        return {name: value for name, value in named.items() if value}


def local_folder(source: str) -> Path | None:
    """The folder holding this source's files on this machine, if any (bundled, a path, or the HF cache)."""
    if is_bundled(source):
        folder = bundled_dir()
        return folder if is_prepared(folder) else None
    if source.startswith(("/", "./", "../", "~")):
        path = Path(source).expanduser()
        return path if path.is_dir() else None
    if source.count("/") == 1:  # a hub id: look for a downloaded snapshot
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
        snapshots = hub.expanduser() / f"models--{source.replace('/', '--')}" / "snapshots"
        found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
        return found[-1].parent if found else None
    return None


def read_facts(folder: Path) -> ModelFacts:
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    config: dict[str, object] = {}
    config_path = folder / "config.json"
    if config_path.is_file():
        loaded = json.loads(config_path.read_text())
        config = loaded.get("text_config", loaded) if isinstance(loaded, dict) else {}

    def number(*keys: str) -> int | None:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        return None

    heads = number("num_attention_heads", "n_head")
    return ModelFacts(
        weights_gb=weights / 1e9 if weights else None,
        layers=number("num_hidden_layers", "n_layer", "num_layers"),
        heads=heads,
        kv_heads=number("num_key_value_heads") or heads,
        hidden=number("hidden_size", "n_embd", "d_model"),
        intermediate=number("intermediate_size"),
    )


def facts_for(source: str) -> ModelFacts:
    folder = local_folder(source)
    return read_facts(folder) if folder else ModelFacts()
