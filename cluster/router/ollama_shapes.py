"""Ollama's API in OpenAI's terms, both ways, as pure functions: an Ollama request becomes the OpenAI body the
workers serve (chat, completions, embeddings), and the OpenAI answer becomes Ollama's (JSON, or NDJSON lines for
a stream). Only what the tools that speak Ollama call (Open WebUI, Continue, editor plugins, the `ollama` client).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool

from cluster.router.validation import MAX_ITEMS, _Passthrough
from proto import orchard_pb2 as pb
from worker.shared.capabilities import REASONING, TOOLS

# Ollama's `options` that have an OpenAI (or vLLM) request parameter of another name.
_OPTIONS = {"num_predict": "max_tokens", "repeat_penalty": "repetition_penalty"}
_SAME = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "frequency_penalty", "presence_penalty")
API_VERSION = "0.12.0"  # the Ollama API level these shapes follow; clients compare it to enable features


class OllamaMessage(_Passthrough):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: None = None  # no engine here reads images
    tool_calls: Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] | None = None


class _Ask(_Passthrough):
    model: str = Field(min_length=1, max_length=512)
    stream: StrictBool = True  # Ollama streams unless told not to
    options: dict[str, Any] | None = None
    format: Literal["json"] | dict[str, Any] | None = None
    keep_alive: Any = None  # models stay loaded on their workers whatever a client asks


class OllamaChat(_Ask):
    messages: list[OllamaMessage] = Field(min_length=1, max_length=MAX_ITEMS)
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] | None = None


class OllamaGenerate(_Ask):
    prompt: str = ""
    system: str | None = None
    raw: StrictBool = False
    images: None = None
    suffix: None = None  # fill-in-the-middle: no served engine does it


class OllamaEmbed(_Passthrough):
    model: str = Field(min_length=1, max_length=512)
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_ITEMS)]
    dimensions: int | None = Field(default=None, ge=1, strict=True)
    truncate: StrictBool | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


def _sampling(ask: _Ask) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, value in (ask.options or {}).items():
        if name in _SAME:
            body[name] = value
        elif name in _OPTIONS and not (name == "num_predict" and isinstance(value, int) and value < 0):
            body[_OPTIONS[name]] = value  # num_predict -1: no limit
    if ask.format == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(ask.format, dict):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": ask.format}}
    if ask.stream:  # the last line carries the counts
        body["stream_options"] = {"include_usage": True}
    return {"model": ask.model, "stream": ask.stream, **body}


def chat_body(ask: OllamaChat) -> dict[str, Any]:
    messages = [_message(m) for m in ask.messages]
    body = {**_sampling(ask), "messages": messages}
    return body | ({"tools": ask.tools} if ask.tools else {})


def _message(message: OllamaMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:  # Ollama's arguments are an object, OpenAI's a JSON string
        functions: list[dict[str, Any]] = [
            f if isinstance(f := call.get("function"), dict) else {} for call in message.tool_calls
        ]
        out["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": str(f.get("name", "")), "arguments": json.dumps(f.get("arguments") or {})},
            }
            for i, f in enumerate(functions)
        ]
    return out


def generate_body(ask: OllamaGenerate) -> tuple[bool, dict[str, Any]]:
    """(whether it is a chat, the body): a raw prompt is a completion; otherwise the model's chat template
    applies, as Ollama's own template would."""
    if ask.raw:
        return False, {**_sampling(ask), "prompt": ask.prompt}
    system = [{"role": "system", "content": ask.system}] if ask.system else []
    return True, {**_sampling(ask), "messages": [*system, {"role": "user", "content": ask.prompt}]}


def embed_body(ask: OllamaEmbed) -> dict[str, Any]:
    return {"model": ask.model, "input": ask.input} | ({"dimensions": ask.dimensions} if ask.dimensions else {})


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Reply:
    """Turns one OpenAI answer (whole, or its stream chunk by chunk) into Ollama's: for `/api/chat` (a message)
    or `/api/generate` (a response text), from an OpenAI chat (`from_chat`) or completion."""

    def __init__(self, model: str, chat: bool, from_chat: bool | None = None) -> None:
        self.model, self.chat, self.started = model, chat, time.monotonic_ns()
        self.from_chat = chat if from_chat is None else from_chat
        self.done_reason, self.finished = "stop", False
        self.calls: dict[int, dict[str, str]] = {}  # a stream's tool calls, gathered from their fragments

    def _line(self, text: str, tool_calls: list[Any] | None = None) -> dict[str, Any]:
        if not self.chat:
            return {"model": self.model, "created_at": now_iso(), "response": text, "done": False}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = [_ollama_call(call) for call in tool_calls]
        return {"model": self.model, "created_at": now_iso(), "message": message, "done": False}

    def done(self, usage: dict[str, Any] | None, text: str = "", calls: list[Any] | None = None) -> dict[str, Any]:
        """The last line: the counts (Ollama's names) and why it stopped."""
        self.finished, usage = True, usage or {}
        elapsed = time.monotonic_ns() - self.started
        return {
            **self._line(text, calls),
            "done": True,
            "done_reason": self.done_reason,
            "total_duration": elapsed,
            "load_duration": 0,
            "prompt_eval_count": usage.get("prompt_tokens", 0),
            "eval_count": usage.get("completion_tokens", 0),
            "eval_duration": elapsed,
        }

    def _text(self, choice: dict[str, Any]) -> tuple[str, list[Any] | None]:
        """A choice's text and tool calls, from a chat's message or delta, or a completion's text."""
        if not self.from_chat:
            return choice.get("text") or "", None
        said = choice.get("message") or choice.get("delta") or {}
        return said.get("content") or "", said.get("tool_calls")

    def whole(self, body: dict[str, Any]) -> dict[str, Any]:
        choice = (body.get("choices") or [{}])[0]
        self.done_reason = choice.get("finish_reason") or "stop"
        return self.done(body.get("usage"), *self._text(choice))

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The Ollama lines for one OpenAI stream chunk (none for a chunk with nothing to show). A tool call
        streams as fragments of its JSON arguments: it goes out whole, when the choice finishes."""
        if isinstance(chunk.get("error"), str):
            return [{"error": chunk["error"]}]
        choices = chunk.get("choices") or []
        if not choices:
            return [self.done(chunk.get("usage"))] if chunk.get("usage") else []
        text, calls = self._text(choices[0])
        for call in calls or ():
            self._gather(call)
        lines = [self._line(text)] if text else []
        if choices[0].get("finish_reason"):
            self.done_reason = choices[0]["finish_reason"]
            if self.calls:
                lines.append(self._line("", [{"function": f} for _, f in sorted(self.calls.items())]))
                self.calls = {}
        return lines

    def _gather(self, call: dict[str, Any]) -> None:
        function = call.get("function") or {}
        gathered = self.calls.setdefault(int(call.get("index") or 0), {"name": "", "arguments": ""})
        gathered["name"] += function.get("name") or ""
        gathered["arguments"] += function.get("arguments") or ""


def _ollama_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = {}
    return {"function": {"name": function.get("name", ""), "arguments": arguments}}


def embed_reply(model: str, body: dict[str, Any], started_ns: int) -> dict[str, Any]:
    vectors = [item.get("embedding") for item in sorted(body.get("data") or [], key=lambda d: d.get("index", 0))]
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": time.monotonic_ns() - started_ns,
        "load_duration": 0,
        "prompt_eval_count": (body.get("usage") or {}).get("prompt_tokens", 0),
    }


def model_card(name: str, info: pb.ModelInfo) -> dict[str, Any]:
    """A model as `/api/tags` lists it (Orchard's models have no Ollama digest or file size: zeros)."""
    return {
        "name": name,
        "model": name,
        "modified_at": now_iso(),
        "size": 0,
        "digest": "",
        "details": {"format": "", "family": "", "families": None, "parameter_size": "", "quantization_level": ""},
        "context_length": info.max_model_len,
        "capabilities": capabilities(info),
    }


def capabilities(info: pb.ModelInfo) -> list[str]:
    """In Ollama's words (its `/api/show`): what editor plugins check before they offer tools or thinking."""
    found = ["completion"] if "/v1/chat/completions" in info.routes else []
    found += ["tools"] if TOOLS in info.capabilities else []
    found += ["thinking"] if REASONING in info.capabilities else []
    return found + (["embedding"] if "/v1/embeddings" in info.routes else [])
