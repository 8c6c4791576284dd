"""The `sim` engine's timing model and its deterministic text generator.

`sim` is a product feature for load, routing and scale studies: it costs time like an engine does, not
compute. It is never used to prove that answers are correct.
"""

from __future__ import annotations

import hashlib
import random
import re

_WORD = re.compile(r"\S+")
_VOCAB = (
    "the a orchard apple tree grows in spring light and rain with roots deep under quiet soil "
    "every branch holds fruit that ripens slowly while bees move between blossoms near the old wall"
).split()


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
