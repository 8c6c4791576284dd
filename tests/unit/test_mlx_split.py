"""The planned layer split reaches mlx-lm's own model classes: a PipelineMixin architecture (qwen2) and llama
(pipelined by Orchard), built tiny and split for a 2-rank group as placement decided (2 + 4 of 6 layers)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from worker.engines.programs import mlx_server
from worker.shared import layers

ARGS = {
    "hidden_size": 8,
    "num_hidden_layers": 6,
    "intermediate_size": 16,
    "num_attention_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 32,
    "num_key_value_heads": 2,
}


@dataclass
class Group:  # what PipelineMixin.pipeline reads of an mx.distributed.Group
    r: int
    n: int = 2

    def rank(self) -> int:
        return self.r

    def size(self) -> int:
        return self.n


def test_rank_zero_holds_the_last_layers() -> None:
    assert layers.rank_layers([2, 4], 0) == (4, 6) and layers.rank_layers([2, 4], 1) == (0, 4)
    assert layers.even_split(7, 3) == [3, 2, 2]


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_mlx_lm_models_split_as_planned(architecture: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlx_lm")
    import importlib

    from mlx_lm.models import llama
    from mlx_lm.models.pipeline import PipelineMixin

    for owner, name in ((PipelineMixin, "pipeline"), (llama, "LlamaModel"), (llama.Model, "layers")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # put back after the test
    mlx_server._planned_split([2, 4])
    mlx_server._pipelined_llama([2, 4])
    module = importlib.import_module(f"mlx_lm.models.{architecture}")
    held = []
    for rank in (0, 1):
        model = module.Model(module.ModelArgs(model_type=architecture, **ARGS))
        model.model.pipeline(Group(rank))
        held.append((model.model.start_idx, model.model.end_idx, len(model.model.pipeline_layers)))
    assert held == [(4, 6, 2), (0, 4, 4)]
    with pytest.raises(ValueError, match="does not fit 6 layers on 3 ranks"):
        module.Model(module.ModelArgs(model_type=architecture, **ARGS)).model.pipeline(Group(0, 3))
