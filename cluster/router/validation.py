"""What the router reads from a request, validated once: model, stream, messages/prompt, limits.

Everything else in the body passes through to the engine unchanged (tools, logprobs, response_format...).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from cluster.router.errors import ApiError
from proto import orchard_pb2 as pb
from worker.shared.capabilities import TOOLS

MAX_TOKENS_CEILING = 1 << 20  # when a model's context length is unknown
MAX_ITEMS = 2048  # messages in a chat, prompts in a batch (OpenAI's own limit for arrays of inputs)
RESPONSE_ID = r"^[A-Za-z0-9_-]{1,128}$"  # vLLM's are resp_ and 32 hex digits; the id also goes into a URL
MAX_DEPTH = 64  # JSON nesting: OpenAI bodies need a handful of levels, tools' JSON schemas a few dozen at most


class _Passthrough(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ChatMessage(_Passthrough):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class _Common(_Passthrough):
    model: str = Field(min_length=1, max_length=512)
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    # Strict: `true` is not 1 and "1" is not a number (OpenAI refuses both; pydantic's lax mode would not).
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2, strict=True)
    top_p: float | None = Field(default=None, gt=0, le=1, strict=True)
    n: int | None = Field(default=None, ge=1, le=16, strict=True)
    user: str | None = Field(default=None, max_length=256)

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_ITEMS)


class CompletionRequest(_Common):
    prompt: (
        str
        | Annotated[list[str], Field(max_length=MAX_ITEMS)]
        | list[int]
        | Annotated[list[list[int]], Field(max_length=MAX_ITEMS)]
    )


class _Whole(_Passthrough):
    """A request answered whole that generates nothing (embeddings, tokenize): no stream, no max_tokens."""

    model: str = Field(min_length=1, max_length=512)
    user: str | None = Field(default=None, max_length=256)
    stream: Literal[False] = False
    stream_options: None = None

    def requested_tokens(self) -> int | None:
        return None


class EmbeddingRequest(_Whole):
    input: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_ITEMS)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[list[int]], Field(min_length=1, max_length=MAX_ITEMS)]
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, strict=True)


class TokenizeRequest(_Whole):
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_ITEMS)] | None = None
    add_special_tokens: StrictBool | None = None

    @model_validator(mode="after")
    def _one_text(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either `prompt` or `messages`")
        return self


class DetokenizeRequest(_Whole):
    tokens: Annotated[list[Annotated[int, Field(ge=0, strict=True)]], Field(max_length=1 << 20)]


class AnthropicMessage(_Passthrough):
    # "system": current Anthropic clients (the SDK's SystemMessageParam, Claude Code) send system turns inside
    # `messages`; vLLM's /v1/messages merges them as the chat template allows
    role: Literal["user", "assistant", "system"]
    content: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)]


class _Anthropic(_Passthrough):
    """What Anthropic's Messages API and its token count share."""

    model: str = Field(min_length=1, max_length=512)
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_ITEMS)
    system: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] | None = None
    metadata: dict[str, Any] | None = None
    stream_options: None = None

    @property
    def user(self) -> str | None:
        """Anthropic's end-user id (`metadata.user_id`), in the place OpenAI's requests keep theirs."""
        user = (self.metadata or {}).get("user_id")
        return user if isinstance(user, str) and len(user) <= 256 else None


class MessagesRequest(_Anthropic):
    """Anthropic's Messages API (`max_tokens` is required there)."""

    max_tokens: int = Field(ge=1, strict=True)
    stream: StrictBool = False
    temperature: float | None = Field(default=None, ge=0, le=1, strict=True)
    top_p: float | None = Field(default=None, gt=0, le=1, strict=True)
    top_k: int | None = Field(default=None, ge=0, strict=True)
    stop_sequences: Annotated[list[str], Field(max_length=64)] | None = None

    def requested_tokens(self) -> int | None:
        return self.max_tokens


class CountTokensRequest(_Anthropic):
    stream: Literal[False] = False

    def requested_tokens(self) -> int | None:
        return None


class ResponsesRequest(_Passthrough):
    """OpenAI's Responses API."""

    model: str = Field(min_length=1, max_length=512)
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_ITEMS)]
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, pattern=RESPONSE_ID)
    max_output_tokens: int | None = Field(default=None, ge=1, strict=True)
    stream: StrictBool = False
    stream_options: None = None
    store: StrictBool | None = None
    temperature: float | None = Field(default=None, ge=0, le=2, strict=True)
    top_p: float | None = Field(default=None, gt=0, le=1, strict=True)
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] | None = None
    user: str | None = Field(default=None, max_length=256)

    def requested_tokens(self) -> int | None:
        return self.max_output_tokens


class ResponseRetrieval(_Passthrough):
    """GET /v1/responses/{id}, as the router sends it on (the model is the one that answered)."""

    model: str
    response_id: str = Field(pattern=RESPONSE_ID)
    stream: Literal[False] = False
    stream_options: None = None
    user: None = None

    def requested_tokens(self) -> int | None:
        return None


AnyRequest = (
    ChatRequest
    | CompletionRequest
    | EmbeddingRequest
    | TokenizeRequest
    | DetokenizeRequest
    | MessagesRequest
    | CountTokensRequest
    | ResponsesRequest
    | ResponseRetrieval
)
R = TypeVar("R", bound=BaseModel)


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request: {exc}") from exc
    except RecursionError:
        raise ApiError(400, "The JSON body of your request is nested too deeply.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(body, MAX_DEPTH):  # counted at C speed
        raise ApiError(400, f"The JSON body of your request is nested more than {MAX_DEPTH} levels deep.")
    if b"\\u" in raw and _lone_surrogate(body):
        raise ApiError(400, "The request body contains an unpaired UTF-16 surrogate (\\ud800-\\udfff): not text.")
    return body


def _deeper_than(body: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` deep (iterative: a deep body cannot recurse us)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _lone_surrogate(body: dict[str, Any]) -> bool:
    """JSON may escape half of a UTF-16 pair (\\ud800); Python then holds a string no encoder can write, which
    would fail later (hashing the prompt, the engine). Checked only for bodies that contain escapes."""
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def validate(body: dict[str, Any], kind: type[R]) -> R:
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {first['msg']}."
        raise ApiError(400, message, param=param, code="invalid_value") from exc


def _asks_for(body: dict[str, Any], param: str) -> bool:
    """Whether the body uses `param` in a way that changes the answer (n=1, text format, no tools do not)."""
    value = body.get(param)
    if param == "n":
        return isinstance(value, int) and value > 1
    if param == "response_format":
        return isinstance(value, dict) and value.get("type", "text") != "text"
    if param == "logprobs":
        return bool(value) or body.get("top_logprobs") is not None
    return bool(value)


def check_capabilities(body: dict[str, Any], unsupported: Sequence[str], engine: str) -> None:
    """400 naming the parameter and the engine for what the model's engine cannot honour (not a wrong answer)."""
    for param in unsupported:
        if _asks_for(body, param):
            raise ApiError(
                400,
                f"'{param}' is not supported for this model: it runs on the {engine or 'its'} engine, which "
                f"cannot honour it.{' Send separate requests instead.' if param == 'n' else ''}",
                param=param,
                code="unsupported_parameter",
            )


def calls_tools(body: dict[str, Any], endpoint: int) -> bool:
    """Whether the answer may be a tool call: tools given and `tool_choice` anything but none (absent means auto
    in OpenAI's, Anthropic's and Ollama's APIs). vLLM needs its tool-call parser for auto, required and a named
    tool alike (vllm/renderers/online_renderer.py); mlx-lm drops tools it cannot parse calls of."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return False
    choice = body.get("tool_choice")
    if endpoint == pb.ENDPOINT_MESSAGES:
        return not (isinstance(choice, dict) and choice.get("type") == "none")
    functions = any(isinstance(tool, dict) and tool.get("type") == "function" for tool in tools)
    if endpoint == pb.ENDPOINT_RESPONSES and not functions:
        return False  # built-in tools (web search...) are refused by the engine in its own words
    return endpoint in (pb.ENDPOINT_CHAT_COMPLETIONS, pb.ENDPOINT_RESPONSES) and choice != "none"


def check_tool_calling(body: dict[str, Any], endpoint: int, model: pb.ModelInfo) -> None:
    """400 naming the model where the model would be given tools its engine cannot parse calls of: the calls
    would come back as text, or the engine would refuse in words about its own flags."""
    if model.capabilities_known and TOOLS not in model.capabilities and calls_tools(body, endpoint):
        raise ApiError(
            400,
            f"The model `{model.name}` cannot call tools on this cluster: its engine has no tool-call parser for "
            "it (a model lists `tools` in its capabilities in GET /v1/models). Use another model, or set "
            "`tool_parser` for this model in the hosts file.",
            param="tools",
            code="tools_unsupported",
        )


def check_limits(request: AnyRequest, max_model_len: int) -> None:
    """max_tokens must fit the model's context (or a sane ceiling when unknown)."""
    wanted = request.requested_tokens()
    limit = max_model_len or MAX_TOKENS_CEILING
    if wanted is not None and wanted > limit:
        named = ("max_completion_tokens", "max_output_tokens")  # OpenAI chat's newer name, the Responses API's
        param = next((p for p in named if getattr(request, p, None)), "max_tokens")
        raise ApiError(
            400,
            f"'{param}' is {wanted}, more than the model's context length of {limit} tokens.",
            param=param,
            code="invalid_value",
        )
