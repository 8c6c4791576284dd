"""One conversation about the weather in each API's shapes, for tool calls: a 135M model calls a tool by itself
when the conversation shows it how — two earlier weather questions answered by the tool, then Paris; decoding is
greedy. The same turns go out in each API's own shapes, and the same call must come back out of each."""

from __future__ import annotations

import json
from typing import Any

WEATHER = "get_weather"
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ABOUT = "Get the current weather in a city."
SHOTS = (("London", "Rain, 12 degrees."), ("Berlin", "Sunny, 20 degrees."))
PARIS = {"city": "Paris"}
GREEDY = {"temperature": 0}


def ask(city: str) -> dict[str, Any]:
    return {"role": "user", "content": f"What is the weather in {city}?"}


def chat_turns() -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for i, (city, said) in enumerate(SHOTS):
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": WEATHER, "arguments": json.dumps({"city": city})},
        }
        turns += [
            ask(city),
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": said},
        ]
    return [*turns, ask("Paris")]


def anthropic_turns() -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for i, (city, said) in enumerate(SHOTS):
        use = {"type": "tool_use", "id": f"toolu_{i}", "name": WEATHER, "input": {"city": city}}
        result = {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": said}
        turns += [ask(city), {"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]
    return [*turns, ask("Paris")]


def responses_input() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for i, (city, said) in enumerate(SHOTS):
        items += [
            ask(city),
            {"type": "function_call", "call_id": f"call_{i}", "name": WEATHER, "arguments": json.dumps({"city": city})},
            {"type": "function_call_output", "call_id": f"call_{i}", "output": said},
        ]
    return [*items, ask("Paris")]


def ollama_turns() -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for city, said in SHOTS:
        call = {"function": {"name": WEATHER, "arguments": {"city": city}}}
        turns += [
            ask(city),
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": said},
        ]
    return [*turns, ask("Paris")]


CHAT_TOOLS = [{"type": "function", "function": {"name": WEATHER, "description": ABOUT, "parameters": PARAMS}}]
ANTHROPIC_TOOLS = [{"name": WEATHER, "description": ABOUT, "input_schema": PARAMS}]
RESPONSES_TOOLS = [{"type": "function", "name": WEATHER, "description": ABOUT, "parameters": PARAMS}]
