"""How the mlx-lm installed here splits an architecture into a pipeline (`sharded_load` with a pipeline group).

mlx-lm pipelines a model whose decoder has `pipeline()`: most get it from its `PipelineMixin`, which the mlx
engine makes split as placement planned (worker/engines/programs/mlx_server.py); some define their own, which
splits evenly; llama has none, and the mlx engine gives it one. Any other architecture fails at load with "The
model does not support pipelining" — so placement refuses it first, naming the architecture.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Literal

Support = Literal["planned", "even", "none", ""]  # "": not known here (no mlx-lm, or an unknown model type)


def pipeline_support(model_type: str) -> Support:
    if not model_type:
        return ""
    try:
        from mlx_lm.utils import MODEL_REMAPPING
    except Exception:  # no mlx-lm, or one that does not import here: not known (never a host's facts failing)
        return ""
    name = MODEL_REMAPPING.get(model_type, model_type)
    if name == "llama":
        return "planned"  # the mlx engine's own pipelined llama
    try:
        module = importlib.import_module(f"mlx_lm.models.{name}")
    except Exception:
        return ""
    classes = [c for c in vars(module).values() if isinstance(c, type) and hasattr(c, "pipeline")]
    if not classes:
        return "none"
    own = [c for c in classes if c.__module__ == module.__name__ and "pipeline" in vars(c)]
    if any("split" not in inspect.signature(c.pipeline).parameters for c in own):
        return "even"
    return "planned"
