"""How a pipeline group splits a model's layers over its ranks, as mlx-lm runs them: the mlx engine splits by it,
and the head gives each rank only the weight files holding its layers (cluster/store/ranks.py)."""

from __future__ import annotations


def rank_layers(split: list[int], rank: int) -> tuple[int, int]:
    """[start, end) of the layers `rank` runs, mlx-lm's convention: rank 0 holds the last layers."""
    start = sum(split[rank + 1 :])
    return start, start + split[rank]


def even_split(layers: int, size: int) -> list[int]:
    base, extra = divmod(layers, size)
    return [base + (1 if r < extra else 0) for r in range(size)]
