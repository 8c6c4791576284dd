"""What an engine does for a model beyond plain text, one vocabulary from agent to router to CLI
(ModelInfo.capabilities)."""

from __future__ import annotations

TOOLS = "tools"  # the engine parses the model's tool calls: a request with tools can be answered with a call
REASONING = "reasoning"  # the engine separates the model's thinking from its answer
