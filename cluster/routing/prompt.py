"""The text the prefix index keys on: a stable rendering of what the engine will see first."""

from __future__ import annotations

import json
from typing import Any


def render_for_routing(body: dict[str, Any]) -> str:
    """Chat (OpenAI's messages, Anthropic's system and messages, the Responses API's instructions and input):
    role and text of each turn in order; completions: the prompt. It need not match the engine's chat template,
    only be equal for equal prefixes."""
    turns: list[tuple[str, Any]] = []
    for role, key in (("system", "system"), ("system", "instructions")):
        if body.get(key):
            turns.append((role, body[key]))
    messages = body.get("messages", body.get("input"))
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if isinstance(messages, list):
        turns += [(m.get("role", ""), m.get("content")) for m in messages if isinstance(m, dict)]
        return "\n".join(f"<{role}>{_text(content)}" for role, content in turns)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    return json.dumps(prompt, separators=(",", ":")) if prompt is not None else ""


def _text(content: Any) -> str:
    """A turn's text: a string, or the text of its parts (text, input_text...)."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")
