"""What a model needs, from wherever its files are: the head's own copy first, else a host's report.

Weights are the checkpoint's files as they are (a quantized MLX checkpoint is already small, so its files are
its size); shape facts come from `config.json` (worker/shared/modelfiles.py reads both, on the head or on a host). A
model whose files are nowhere in reach (a hub id not downloaded yet) is "unknown": give `size_gb` (and `layers`
for a pipeline group) in the hosts file, or placement treats it as fitting any host.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from worker.shared.daemon import ModelFacts
from worker.shared.modelfiles import facts_for

__all__ = ["ModelFacts", "facts_for", "gathered"]


def gathered(source: str, head: ModelFacts, hosts: Iterable[Mapping[str, ModelFacts]]) -> ModelFacts:
    """The head's facts when it holds the files, else the first host's that reported them; how mlx-lm splits
    the architecture from a host when one says (the ranks' mlx-lm loads it, not the head's). Pure."""
    reports = [found[source] for found in hosts if source in found and found[source].present]
    facts = head if head.present else next(iter(reports), head)
    split = next((r.mlx_pipeline for r in reports if r.mlx_pipeline), facts.mlx_pipeline)
    return facts.model_copy(update={"mlx_pipeline": split})
