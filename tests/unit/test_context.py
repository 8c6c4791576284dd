"""Context length from the model folder, and the prompt guard for engines that do not enforce it (mlx-lm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.context import PromptGuard, context_of
from worker.shared.models import bundled_dir, is_prepared


def test_context_comes_from_config_and_the_hosts_ceiling(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    assert context_of(tmp_path) == 8192 and context_of(tmp_path, 4096) == 4096 and context_of(tmp_path, 9999) == 8192
    assert context_of(tmp_path / "absent") == 0 and context_of(tmp_path / "absent", 2048) == 2048


@pytest.mark.skipif(not is_prepared(bundled_dir()), reason="needs the bundled model (deploy/setup.sh prepares it)")
def test_the_guard_counts_with_the_models_own_tokenizer_and_template() -> None:
    guard = PromptGuard(bundled_dir(), 64)
    short = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    assert guard.refusal(short) is None
    counted = guard.prompt_tokens(short)
    assert 5 < counted < 40  # "hi" inside SmolLM2's chat template (system prompt, role markers)
    long = {"prompt": "word " * 100, "max_tokens": 10}
    message = guard.refusal(long)
    assert message is not None and message.startswith("This model's maximum context length is 64 tokens.")
    assert f"({guard.prompt_tokens(long)} in the messages, 10 in the completion)" in message
    assert guard.refusal({"prompt": [1, 2, 3], "max_tokens": 61}) is None  # token ids count as they are
