"""The text the prefix index keys on: a stable rendering of what the engine will see first."""

from __future__ import annotations

import json
from typing import Any


def render_for_routing(body: dict[str, Any]) -> str:
    """Chat: role and content of each message in order (content parts: their text); completions: the prompt.
    It need not match the engine's chat template, only be equal for equal prefixes."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            parts.append(f"<{message.get('role', '')}>{content or ''}")
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    return json.dumps(prompt, separators=(",", ":")) if prompt is not None else ""
