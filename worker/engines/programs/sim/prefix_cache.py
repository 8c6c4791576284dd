"""The sim engine's prefix cache: an LRU of token blocks keyed by chained hashes, like vLLM's paged KV cache."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence


def token_block_hashes(tokens: Sequence[str], block_tokens: int) -> list[bytes]:
    """Chained hash per complete block of tokens (equal hash ⇔ equal prefix up to that block)."""
    hashes, previous = [], b""
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        block = "\x00".join(tokens[start : start + block_tokens]).encode()
        previous = hashlib.blake2b(previous + block, digest_size=8).digest()
        hashes.append(previous)
    return hashes


class PrefixCache:
    """Bounded LRU of blocks. `lookup_and_insert` returns how many prompt tokens were already cached."""

    def __init__(self, capacity_blocks: int, block_tokens: int = 16) -> None:
        if capacity_blocks < 0 or block_tokens < 1:
            raise ValueError("capacity_blocks must be ≥ 0 and block_tokens ≥ 1")
        self.capacity = capacity_blocks
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()

    def lookup_and_insert(self, tokens: Sequence[str]) -> int:
        hashes = token_block_hashes(tokens, self.block_tokens)
        cached = 0
        for value in hashes:
            if value not in self._blocks:
                break
            cached += 1
        for value in hashes:
            self._blocks[value] = None
            self._blocks.move_to_end(value)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return cached * self.block_tokens
