"""A model's files on this machine: where they are and the facts placement needs (weights, layers, shape).

Read wherever the files are — on the head for `cluster plan`, on a rank host (`worker.daemon facts --model`)
when the head does not hold the model — so a shard group never needs the model on the head. Weights are the
checkpoint's `*.safetensors` as they are; shape facts come from `config.json` (a VLM's `text_config`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from worker.shared.daemon import ModelFacts
from worker.shared.mlx_support import pipeline_support
from worker.shared.models import bundled_dir, is_bundled, is_prepared


def is_hub_id(source: str) -> bool:
    """`org/name`: a model on the hub (not a path, not the bundled name)."""
    return source.count("/") == 1 and not source.startswith(("/", "./", "../", "~"))


def hub_cache() -> Path:
    """The hub's cache folder, found as huggingface_hub finds it (HF_HUB_CACHE, else HF_HOME/hub)."""
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface")
    return Path(os.environ.get("HF_HUB_CACHE") or Path(home) / "hub").expanduser()


def local_folder(source: str) -> Path | None:
    """The folder holding this source's files on this machine, if any (bundled, a path, or the HF cache)."""
    if is_bundled(source):
        folder = bundled_dir()
        return folder if is_prepared(folder) else None
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser()
    if source.startswith(("/", "./", "../", "~")):
        return None
    if is_hub_id(source):  # a downloaded snapshot (maybe partial: the fetch before an engine completes it)
        snapshots = hub_cache() / f"models--{source.replace('/', '--')}" / "snapshots"
        found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
        return found[-1].parent if found else None
    return None


def read_facts(folder: Path) -> ModelFacts:
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    config: dict[str, object] = {}
    config_path = folder / "config.json"
    top: dict[str, object] = {}
    try:
        loaded = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except (OSError, ValueError):  # a broken config.json: the weights still count; the shape is unknown
        loaded = {}
    if isinstance(loaded, dict):
        top, text = loaded, loaded.get("text_config", loaded)
        config = text if isinstance(text, dict) else loaded

    def number(*keys: str) -> int | None:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        return None

    heads = number("num_attention_heads", "n_head")
    model_type = top.get("model_type") or config.get("model_type")
    return ModelFacts(
        present=True,
        weights_gb=weights / 1e9 if weights else None,
        layers=number("num_hidden_layers", "n_layer", "num_layers"),
        heads=heads,
        kv_heads=number("num_key_value_heads") or heads,
        hidden=number("hidden_size", "n_embd", "d_model"),
        intermediate=number("intermediate_size"),
        model_type=model_type if isinstance(model_type, str) else "",
        mlx_pipeline=pipeline_support(model_type) if isinstance(model_type, str) else "",
    )


def facts_for(source: str) -> ModelFacts:
    """The facts of a source's files here; `present` false (and nothing known) when they are not here."""
    folder = local_folder(source)
    return read_facts(folder) if folder else ModelFacts()
