"""Which weight files a pipeline rank needs: those holding its layers, and those holding the tensors every rank
loads (embeddings, the final norm, the head), read from the model's `model.safetensors.index.json` as mlx-lm 0.32's
`sharded_load` reads it. mlx-lm loads with strict=False: a rank missing one of these files would run with random
weights, so the set must be whole before its engine starts."""

from __future__ import annotations

import re
from collections.abc import Mapping

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")  # mlx-lm's own pattern for a tensor's layer


def files_for_layers(weight_map: Mapping[str, str], start: int, end: int) -> set[str]:
    """The files holding layers [start, end) and every tensor of no layer."""
    needed = set()
    for tensor, file in weight_map.items():
        match = LAYER.search(tensor)
        if match is None or start <= int(match.group(1)) < end:
            needed.add(file)
    return needed
