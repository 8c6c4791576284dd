"""The context length of a model, and the guard for engines that do not enforce it themselves.

vLLM answers an over-long prompt with OpenAI's 400; mlx-lm's server starts on it and hangs. For such engines
the agent counts the prompt with the model's own tokenizer and chat template (as the engine will render it)
and refuses what cannot fit, in vLLM's words. The context comes from the model folder's `config.json`
(`max_position_embeddings`), capped by the host's `--max-model-len`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def context_of(folder: str | Path, ceiling: int | None = None) -> int:
    """Tokens the model at `folder` accepts (0: unknown, e.g. a hub id not downloaded yet), capped by `ceiling`."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return ceiling or 0
    found = config.get("max_position_embeddings") if isinstance(config, dict) else None
    length = found if isinstance(found, int) and found > 0 else 0
    if ceiling:
        return min(length, ceiling) if length else ceiling
    return length


class PromptGuard:
    """Counts a request's prompt tokens with the model's tokenizer; loaded once, on first use (seconds)."""

    def __init__(self, folder: str | Path, context: int) -> None:
        self.folder, self.context = str(folder), context
        self._tokenizer: Any = None

    def load(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer  # mlx-lm's own dependency

            self._tokenizer = AutoTokenizer.from_pretrained(self.folder)
        return self._tokenizer

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        tokenizer = self.load()
        if isinstance(body.get("messages"), list):
            text = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
            return len(tokenizer.encode(text, add_special_tokens=False))  # the template holds the special tokens
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return len(tokenizer.encode(prompt))
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        return 0  # lists of prompts: the engine's own business

    def refusal(self, body: dict[str, Any]) -> str | None:
        """vLLM's message when prompt + completion cannot fit the context, else None."""
        prompt = self.prompt_tokens(body)
        wanted = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        completion = wanted if isinstance(wanted, int) else 0
        if prompt + max(completion, 1) <= self.context:
            return None
        return (
            f"This model's maximum context length is {self.context} tokens. However, you requested "
            f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
            "Please reduce the length of the messages or completion."
        )
