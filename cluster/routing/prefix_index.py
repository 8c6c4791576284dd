"""Which worker has likely cached which prompt prefix: chained hashes of fixed-size blocks, one bounded LRU per
worker sized to that worker's KV capacity. Entries are recorded when a request is routed and age out by LRU."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

BLOCK_CHARS = 256  # ≈ 64 tokens of English text: llm-d's prefix block size


def block_hashes(rendered_prompt: str, block_chars: int = BLOCK_CHARS) -> tuple[int, ...]:
    """One hash per *complete* block; each hash covers the whole prefix up to its block (chained), so equal
    hashes mean equal prefixes. A trailing partial block is not hashed: engines cache full blocks only."""
    hashes: list[int] = []
    previous = b""
    for start in range(0, len(rendered_prompt) - block_chars + 1, block_chars):
        block = rendered_prompt[start : start + block_chars].encode()
        previous = hashlib.blake2b(previous + block, digest_size=8).digest()
        hashes.append(int.from_bytes(previous, "big"))
    return tuple(hashes)


class WorkerPrefixes:
    """A bounded LRU of block hashes for one worker."""

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be at least 1")
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def matched_blocks(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of this prompt the worker holds (chained: stop at the first miss)."""
        count = 0
        for value in hashes:
            if value not in self._blocks:
                break
            count += 1
        return count

    def record(self, hashes: Sequence[int]) -> None:
        for value in hashes:
            self._blocks[value] = None
            self._blocks.move_to_end(value)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)


class PrefixIndex:
    """Per-worker prefix LRUs; a worker that leaves is forgotten."""

    def __init__(self, default_capacity_blocks: int = 4096) -> None:
        self.default_capacity = default_capacity_blocks
        self._workers: dict[str, WorkerPrefixes] = {}

    def worker(self, worker_id: str, capacity_blocks: int | None = None) -> WorkerPrefixes:
        if worker_id not in self._workers:
            self._workers[worker_id] = WorkerPrefixes(capacity_blocks or self.default_capacity)
        return self._workers[worker_id]

    def matched_blocks(self, worker_id: str, hashes: Sequence[int]) -> int:
        prefixes = self._workers.get(worker_id)
        return prefixes.matched_blocks(hashes) if prefixes else 0

    def record(self, worker_id: str, hashes: Sequence[int]) -> None:
        self.worker(worker_id).record(hashes)

    def forget(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)
