"""What an engine does for a model beyond plain text, one vocabulary from agent to router to CLI
(ModelInfo.capabilities)."""

from __future__ import annotations

TOOLS = "tools"  # the engine parses the model's tool calls: tool_choice "auto" (and Ollama's tools) work
REASONING = "reasoning"  # the engine separates the model's thinking from its answer
ALL = (TOOLS, REASONING)
