"""The tool-call and reasoning parsers chosen per model family, from config.json's model_type and the markers
of its chat template. Each row is one family: its template excerpt holds the markers the real template renders
(not the whole template), and its source says where vLLM names that parser — TC = vLLM's
docs/features/tool_calling.md, RO = docs/features/reasoning_outputs.md, and the parser modules that look for
those markers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from worker.engines.mlx import mlx_capabilities
from worker.engines.parsers import DS_ASSISTANT, DS_CALL, DS_SEP, DS_TOOLS, ModelSignals, Parsers, choose, read_signals
from worker.engines.vllm import capabilities_of

CHATML_TOOLS = "<|im_start|>system\n<tools>{{ tools }}</tools>\n<tool_call>\n{{ call | tojson }}\n</tool_call>"
DS_V3 = f"{DS_ASSISTANT}{DS_TOOLS}{DS_CALL}{{{{ tool['type'] }}}}{DS_SEP}{{{{ name }}}}\n```json\n"

# family, model_type, template excerpt, tool parser, reasoning parser, source
FAMILIES = [
    (
        "Qwen2.5-Instruct",
        "qwen2",
        CHATML_TOOLS,
        "hermes",
        None,
        "TC 'Qwen Models'; tool_parsers/hermes_tool_parser.py looks for <tool_call>",
    ),
    (
        "QwQ-32B",
        "qwen2",
        CHATML_TOOLS + "<|im_start|>assistant\n<think>\n",
        "hermes",
        "deepseek_r1",
        "TC 'Qwen Models'; RO row 'QwQ-32B'",
    ),
    (
        "Qwen3",
        "qwen3",
        CHATML_TOOLS + "{% if enable_thinking %}<think>\n\n</think>",
        "hermes",
        "qwen3",
        "RO row 'Qwen3 series'; tool_parsers/__init__.py: qwen3_json is Hermes2ProToolParser",
    ),
    ("Qwen3-MoE", "qwen3_moe", CHATML_TOOLS + "<think>", "hermes", "qwen3", "RO row 'Qwen3 series'"),
    (
        "Qwen3-Coder",
        "qwen3_moe",
        "<tool_call>\n<function={{ name }}>\n<parameter={{ k }}>",
        "qwen3_xml",
        None,
        "TC 'Qwen3-Coder Models (qwen3_xml)'; parser/qwen3.py",
    ),
    (
        "Llama 3.1",
        "llama",
        "<|start_header_id|>system<|end_header_id|>\nEnvironment: ipython\n<|python_tag|>",
        "llama3_json",
        None,
        "TC 'Llama Models'; tool_parsers/llama_tool_parser.py bot_token <|python_tag|>",
    ),
    (
        "Llama 4",
        "llama4",
        "<|header_start|>assistant<|header_end|>",
        "llama4_pythonic",
        None,
        "TC 'Llama Models': llama4_pythonic for Llama 4",
    ),
    ("Hermes 3", "llama", CHATML_TOOLS, "hermes", None, "TC 'Hermes Models'"),
    (
        "Mistral Small / Nemo",
        "mistral",
        "[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]",
        "mistral",
        None,
        "TC 'Mistral Models'; parser/mistral.py [TOOL_CALLS]",
    ),
    (
        "Magistral",
        "mistral",
        "[TOOL_CALLS][THINK]{{ thought }}[/THINK]",
        "mistral",
        "mistral",
        "reasoning/__init__.py 'mistral'; parser/mistral.py [THINK]",
    ),
    (
        "DeepSeek-V3-0324",
        "deepseek_v3",
        DS_V3,
        "deepseek_v3",
        None,
        "TC 'DeepSeek-V3 Models'; tool_parsers/deepseekv3_tool_parser.py",
    ),
    (
        "DeepSeek-R1-0528",
        "deepseek_v3",
        DS_V3 + "<think>\n",
        "deepseek_v3",
        "deepseek_r1",
        "TC 'DeepSeek-V3 Models' (R1-0528); RO row 'DeepSeek R1 series'",
    ),
    (
        "DeepSeek-V3.1",
        "deepseek_v3",
        f"{{% if thinking %}}<think>{{% else %}}</think>{{% endif %}}{DS_TOOLS}{DS_CALL}{{{{ name }}}}{DS_SEP}",
        "deepseek_v31",
        "deepseek_v3",
        "TC 'DeepSeek-V3.1'; RO row 'DeepSeek-V3.1'; tool_parsers/deepseekv31_tool_parser.py",
    ),
    (
        "GLM-4.5 / 4.6",
        "glm4_moe",
        "<|assistant|><think><tool_call>{{ name }}<arg_key>k</arg_key>",
        "glm45",
        "glm45",
        "TC 'GLM-4.5 Models'; RO row 'GLM-4.5 series'",
    ),
    (
        "Kimi-K2-Instruct",
        "kimi_k2",
        "<|im_assistant|><|tool_calls_section_begin|><|tool_call_begin|>",
        "kimi_k2",
        None,
        "TC 'Kimi-K2 Models'; parser/kimi_k2.py",
    ),
    (
        "gpt-oss",
        "gpt_oss",
        "<|start|>assistant<|channel|>commentary to=functions.x<|message|><|call|>",
        "openai",
        "openai_gptoss",
        "TC 'OpenAI OSS Models'; reasoning/__init__.py 'openai_gptoss'",
    ),
    (
        "Gemma 3",
        "gemma3",
        "<start_of_turn>user\n{{ content }}<end_of_turn>",
        None,
        None,
        "TC: no Gemma 3 parser (only 'pythonic' with vLLM's own template): its template renders no tool calls",
    ),
    (
        "Phi-4-mini",
        "phi3",
        "<|system|>{{ s }}<|tool|>{{ tools }}<|/tool|><|end|>",
        "phi4_mini_json",
        None,
        "tool_parsers/phi4mini_tool_parser.py",
    ),
    (
        "Granite 3.2",
        "granite",
        "<|start_of_role|>available_tools<|end_of_role|><tool_call>Here is my thought process:",
        "granite",
        "granite",
        "TC 'IBM Granite'; RO row 'Granite 3.2'",
    ),
    (
        "Granite 4.0",
        "granitemoehybrid",
        "<|start_of_role|>system<|end_of_role|><tools></tools><tool_call>",
        "granite4",
        None,
        "TC 'IBM Granite'; tool_parsers/granite4_tool_parser.py",
    ),
    (
        "MiniMax-M2",
        "minimax_m2",
        ']~b]ai<minimax:tool_call><invoke name="x">',
        "minimax_m2",
        "minimax_m2_append_think",
        "RO row 'MiniMax-M2'; parser/minimax_m2.py",
    ),
    (
        "SmolLM2 (the bundled model)",
        "llama",
        "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>",
        None,
        None,
        "its template renders no tools",
    ),
]


@pytest.mark.parametrize(
    ("family", "model_type", "template", "tool", "reasoning", "source"), FAMILIES, ids=[row[0] for row in FAMILIES]
)
def test_each_family_gets_the_parsers_vllm_names_for_it(
    family: str, model_type: str, template: str, tool: str | None, reasoning: str | None, source: str
) -> None:
    assert choose(ModelSignals(model_type, template)) == Parsers(tool, reasoning), f"{family}: {source}"


def test_the_table_covers_at_least_fifteen_families() -> None:
    assert len({row[0] for row in FAMILIES}) >= 15


def test_every_parser_chosen_is_one_the_installed_vllm_registers() -> None:
    pytest.importorskip("vllm")
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    tools = {row[3] for row in FAMILIES if row[3]}
    reasoning = {row[4] for row in FAMILIES if row[4]}
    assert tools <= set(ToolParserManager.list_registered()), tools - set(ToolParserManager.list_registered())
    registered = set(ReasoningParserManager.list_registered())
    assert reasoning <= registered, reasoning - registered


def test_signals_come_from_the_models_own_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "qwen3"}')
    named = [{"name": "default", "template": "<think>"}, {"name": "tool_use", "template": "<tool_call>"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert choose(read_signals(tmp_path)) == Parsers("hermes", "qwen3")
    (tmp_path / "chat_template.jinja").write_text("<|im_start|>")  # a template file wins over tokenizer_config's
    assert read_signals(tmp_path) == ModelSignals("qwen3", "<|im_start|>")
    assert read_signals(tmp_path / "missing") == ModelSignals("", "")


@pytest.mark.parametrize(
    ("argv", "capabilities"),
    [
        (["--model", "m"], ()),
        (["--enable-auto-tool-choice", "--tool-call-parser", "hermes"], ("tools",)),
        (
            ["--enable-auto-tool-choice", "--tool-call-parser=hermes", "--reasoning-parser=qwen3"],
            ("tools", "reasoning"),
        ),
        (["--tool-call-parser", "hermes"], ()),  # a parser without auto choice: tool_choice auto is refused
        (["--reasoning-parser", "deepseek_r1"], ("reasoning",)),
        (["--runner", "pooling", "--convert", "embed", "--reasoning-parser", "x"], ()),
    ],
)
def test_a_vllm_engine_can_do_what_its_command_line_turns_on(argv: list[str], capabilities: tuple[str, ...]) -> None:
    assert capabilities_of(argv) == capabilities


@pytest.mark.parametrize(
    ("family", "model_type", "template", "tool", "reasoning", "source"), FAMILIES, ids=[row[0] for row in FAMILIES]
)
def test_mlx_capabilities_agree_with_mlx_lms_own_inference(
    tmp_path: Path, family: str, model_type: str, template: str, tool: str | None, reasoning: str | None, source: str
) -> None:
    tokenizer_utils = pytest.importorskip("mlx_lm.tokenizer_utils", reason="needs the `mlx` extra (mlx-lm)")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    (tmp_path / "chat_template.jinja").write_text(template)
    found = mlx_capabilities(str(tmp_path))
    assert found is not None
    tokenizer = SimpleNamespace(chat_template=template, get_vocab=dict)
    assert ("tools" in found) == (tokenizer_utils._infer_tool_parser(tokenizer) is not None), family


def test_mlx_capabilities_are_unknown_without_a_local_folder() -> None:
    assert mlx_capabilities("mlx-community/Qwen3-8B-4bit") is None
