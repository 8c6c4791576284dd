"""Which of vLLM's tool-call and reasoning parsers a model needs, chosen from the model itself.

vLLM parses a model's tool calls and its thinking only when told the parser by name (`--enable-auto-tool-choice
--tool-call-parser P`, `--reasoning-parser R`); without one it answers `tool_choice: "auto"` with a 400 and a
coding agent can use no tool. The choice reads what the model's files say: `config.json`'s `model_type` and the
markers its chat template renders tool calls and thinking with. Names and markers follow vLLM's
docs/features/tool_calling.md and reasoning_outputs.md and its parser modules (vllm/tool_parsers/,
vllm/reasoning/, vllm/parser/); tests/unit/test_parsers.py holds one row per family with its source. A model
whose template renders no tool calls gets no tool parser. Pure; the files are read by `read_chat_template`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

OFF = "off"  # a hosts-file value that turns a parser off


@dataclass(frozen=True)
class ModelSignals:
    model_type: str
    template: str  # the chat template's text ("" when the model has none)

    def has(self, *markers: str) -> bool:
        return any(marker in self.template for marker in markers)


Rule = Callable[[ModelSignals], str | None]

# DeepSeek's special tokens, spelled as vLLM's parsers spell them: full-width bars (U+FF5C) and "▁" (U+2581).
DS_TOOLS = "<\uff5ctool\u2581calls\u2581begin\uff5c>"
DS_CALL = "<\uff5ctool\u2581call\u2581begin\uff5c>"
DS_SEP = "<\uff5ctool\u2581sep\uff5c>"
DS_ASSISTANT = "<\uff5cAssistant\uff5c>"

TOOL_RULES: tuple[Rule, ...] = (
    lambda m: "openai" if m.model_type == "gpt_oss" else None,  # Harmony: <|channel|>, <|call|>
    lambda m: "minimax_m2" if m.model_type == "minimax_m2" or m.has("<minimax:tool_call>") else None,
    lambda m: "kimi_k2" if m.model_type == "kimi_k2" or m.has("<|tool_calls_section_begin|>") else None,
    lambda m: ("deepseek_v3" if m.has("```json") else "deepseek_v31") if m.has(DS_TOOLS, DS_SEP) else None,
    lambda m: "glm45" if m.model_type == "glm4_moe" or m.has("<arg_key>") else None,
    lambda m: "qwen3_xml" if m.has("<function=") and m.has("<tool_call>") else None,  # Qwen3-Coder
    lambda m: "mistral" if m.has("[TOOL_CALLS]") else None,
    lambda m: "llama4_pythonic" if m.model_type == "llama4" else None,
    lambda m: "llama3_json" if m.has("<|python_tag|>", "Environment: ipython") else None,
    lambda m: "granite4" if m.model_type == "granitemoehybrid" else None,
    lambda m: "granite" if m.model_type in ("granite", "granitemoe") and m.has("<|start_of_role|>") else None,
    lambda m: "phi4_mini_json" if m.model_type == "phi3" and m.has("<|tool|>") else None,
    lambda m: "hermes" if m.has("<tool_call>") else None,  # Qwen2.5, Qwen3, QwQ, Hermes: <tool_call>{json}
)

REASONING_RULES: tuple[Rule, ...] = (
    lambda m: "openai_gptoss" if m.model_type == "gpt_oss" else None,
    lambda m: "minimax_m2_append_think" if m.model_type == "minimax_m2" else None,
    lambda m: "glm45" if m.model_type == "glm4_moe" or m.has("<arg_key>") else None,
    lambda m: "mistral" if m.has("[THINK]") else None,  # Magistral
    lambda m: "granite" if m.model_type in ("granite", "granitemoe") and m.has("thought process") else None,
    lambda m: _deepseek_reasoning(m) if m.has(DS_TOOLS, DS_ASSISTANT) else None,
    lambda m: "kimi_k2" if m.has("<|tool_calls_section_begin|>") and m.has("<think>") else None,
    lambda m: "qwen3" if m.model_type in ("qwen3", "qwen3_moe") and m.has("<think>") else None,
    lambda m: "deepseek_r1" if m.has("<think>") else None,  # QwQ, the R1 distills: <think>…</think>
)


def _deepseek_reasoning(m: ModelSignals) -> str | None:
    """V3.1 switches thinking with a `thinking` variable; R1 opens its answer with <think>; V3-0324 does neither."""
    if m.has("thinking"):
        return "deepseek_v3"
    return "deepseek_r1" if m.has("<think>") else None


@dataclass(frozen=True)
class Parsers:
    tool: str | None
    reasoning: str | None


def choose(signals: ModelSignals) -> Parsers:
    """The first rule that names a parser, for tools and for reasoning (None: the model has none)."""
    return Parsers(_first(TOOL_RULES, signals), _first(REASONING_RULES, signals))


def _first(rules: tuple[Rule, ...], signals: ModelSignals) -> str | None:
    return next((name for rule in rules if (name := rule(signals)) is not None), None)


def read_signals(folder: Path) -> ModelSignals:
    """model_type and chat template from a model folder (chat_template.jinja, else tokenizer_config.json's)."""
    config = _json(folder / "config.json")
    template = ""
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(errors="replace")
    else:
        found = _json(folder / "tokenizer_config.json").get("chat_template")
        if isinstance(found, list):  # named templates: [{"name": "default", "template": …}, {"name": "tool_use", …}]
            found = "\n".join(str(t.get("template", "")) for t in found if isinstance(t, dict))
        template = found if isinstance(found, str) else ""
    model_type = config.get("model_type")
    return ModelSignals(model_type if isinstance(model_type, str) else "", template)


def _json(path: Path) -> dict[str, object]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
