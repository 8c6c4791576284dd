"""What the router accepts and how it phrases rejections (pure: no sockets)."""

from __future__ import annotations

import json

import pytest

from cluster.router.errors import ApiError, upstream_error
from cluster.router.validation import (
    MAX_TOKENS_CEILING,
    ChatRequest,
    CompletionRequest,
    calls_tools,
    check_capabilities,
    check_limits,
    check_tool_calling,
    parse_body,
    validate,
)
from proto import orchard_pb2 as pb


def chat(**extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_unknown_fields_pass_through_untouched() -> None:
    body = chat(tools=[{"type": "function", "function": {"name": "f"}}], response_format={"type": "json_object"})
    parsed = validate(body, ChatRequest)
    assert parsed.model_extra is not None and parsed.model_extra["tools"][0]["function"]["name"] == "f"


def test_malformed_json_is_400() -> None:
    with pytest.raises(ApiError) as err:
        parse_body(b'{"model": ')
    assert err.value.status == 400 and "JSON" in err.value.message


def test_body_must_be_an_object() -> None:
    with pytest.raises(ApiError, match="JSON object"):
        parse_body(b'"just a string"')


@pytest.mark.parametrize("depth", [65, 5000])  # 5000: past Python's own recursion limit in json.loads
def test_deep_nesting_is_400_not_a_crash(depth: int) -> None:
    raw = b'{"model": "m", "x": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ApiError) as err:
        parse_body(raw)
    assert err.value.status == 400 and "nested" in err.value.message


def test_a_tool_schema_a_few_dozen_levels_deep_passes() -> None:
    inner: dict[str, object] = {"type": "string"}
    for _ in range(25):  # properties → name → schema: two levels each
        inner = {"type": "object", "properties": {"x": inner}}
    body = json.dumps(chat(tools=[{"type": "function", "function": {"name": "f", "parameters": inner}}]))
    assert parse_body(body.encode())["tools"][0]["function"]["name"] == "f"


def test_a_lone_surrogate_is_400_and_an_escaped_pair_is_text() -> None:
    with pytest.raises(ApiError, match="surrogate"):
        parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}')
    pair = parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}')
    assert pair["messages"][0]["content"] == "\U0001f600"


def test_missing_messages_names_the_parameter() -> None:
    with pytest.raises(ApiError) as err:
        validate({"model": "m"}, ChatRequest)
    assert err.value.param == "messages" and err.value.message == "Missing required parameter: 'messages'."


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", -1),
        ("max_tokens", 0),
        ("temperature", 2.5),
        ("top_p", 0),
        ("n", 0),
        ("stream", "yes"),
        ("max_tokens", True),
        ("max_tokens", "8"),
        ("temperature", "1"),
        ("n", 2.0),
    ],
)
def test_out_of_range_numbers_are_400(field: str, value: object) -> None:
    with pytest.raises(ApiError) as err:
        validate(chat(**{field: value}), ChatRequest)
    assert err.value.status == 400 and err.value.param == field


def test_message_with_unknown_role_is_rejected() -> None:
    with pytest.raises(ApiError) as err:
        validate({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, ChatRequest)
    assert err.value.param == "messages.0.role"


def test_completion_prompt_forms() -> None:
    for prompt in ("text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        assert validate({"model": "m", "prompt": prompt}, CompletionRequest).model == "m"
    with pytest.raises(ApiError):
        validate({"model": "m", "prompt": {"not": "ok"}}, CompletionRequest)


def test_max_tokens_above_context_is_rejected_with_the_limit() -> None:
    parsed = validate(chat(max_tokens=5000), ChatRequest)
    with pytest.raises(ApiError) as err:
        check_limits(parsed, 4096)
    assert "4096" in err.value.message and err.value.param == "max_tokens"
    check_limits(validate(chat(max_tokens=4096), ChatRequest), 4096)


def test_unknown_context_length_still_has_a_ceiling() -> None:
    with pytest.raises(ApiError):
        check_limits(validate(chat(max_tokens=10**9), ChatRequest), 0)
    check_limits(validate(chat(max_tokens=MAX_TOKENS_CEILING), ChatRequest), 0)


def test_error_body_has_openai_shape() -> None:
    body = ApiError(404, "no such model", param="model", code="model_not_found").body()
    assert body == {
        "error": {"message": "no such model", "type": "not_found_error", "param": "model", "code": "model_not_found"}
    }


def test_engine_errors_keep_their_message() -> None:
    err = upstream_error(400, b'{"error": {"message": "min_p is not supported", "type": "BadRequestError"}}')
    assert err.status == 400 and err.message == "min_p is not supported"
    plain = upstream_error(500, b"Internal Server Error")
    assert plain.status == 500 and plain.message == "Internal Server Error"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ],
)
def test_what_the_engine_cannot_honour_is_refused_naming_parameter_and_engine(extra: dict, param: str) -> None:
    with pytest.raises(ApiError) as caught:
        check_capabilities(chat(**extra), ("n", "response_format", "logprobs", "tools"), "sim")
    error = caught.value
    assert error.status == 400 and error.body()["error"]["param"] == param
    assert error.body()["error"]["code"] == "unsupported_parameter" and "sim engine" in error.body()["error"]["message"]


def test_harmless_uses_of_those_parameters_pass() -> None:
    for body in (chat(n=1), chat(response_format={"type": "text"}), chat(logprobs=False), chat(tools=[])):
        check_capabilities(body, ("n", "response_format", "logprobs", "tools"), "mlx")
    check_capabilities(chat(n=4, response_format={"type": "json_object"}), (), "vllm")  # vLLM honours both


def _model(known: bool, *capabilities: str) -> pb.ModelInfo:
    return pb.ModelInfo(name="m", capabilities=capabilities, capabilities_known=known)


FUNCTION = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
RESPONSES_FUNCTION = {"type": "function", "name": "f", "parameters": {"type": "object"}}
ANTHROPIC_TOOL = {"name": "f", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("endpoint", "body", "may_call"),
    [
        (pb.ENDPOINT_CHAT_COMPLETIONS, chat(tools=[FUNCTION]), True),  # absent: auto
        (pb.ENDPOINT_CHAT_COMPLETIONS, chat(tools=[FUNCTION], tool_choice="auto"), True),
        (pb.ENDPOINT_CHAT_COMPLETIONS, chat(tools=[FUNCTION], tool_choice="none"), False),
        (pb.ENDPOINT_CHAT_COMPLETIONS, chat(tools=[FUNCTION], tool_choice="required"), True),  # constrained decoding
        (
            pb.ENDPOINT_CHAT_COMPLETIONS,
            chat(tools=[FUNCTION], tool_choice={"type": "function", "function": {"name": "f"}}),
            True,
        ),
        (pb.ENDPOINT_CHAT_COMPLETIONS, chat(tools=[]), False),
        (pb.ENDPOINT_MESSAGES, chat(tools=[ANTHROPIC_TOOL]), True),
        (pb.ENDPOINT_MESSAGES, chat(tools=[ANTHROPIC_TOOL], tool_choice={"type": "auto"}), True),
        (pb.ENDPOINT_MESSAGES, chat(tools=[ANTHROPIC_TOOL], tool_choice={"type": "tool", "name": "f"}), True),
        (pb.ENDPOINT_MESSAGES, chat(tools=[ANTHROPIC_TOOL], tool_choice={"type": "any"}), True),
        (pb.ENDPOINT_MESSAGES, chat(tools=[ANTHROPIC_TOOL], tool_choice={"type": "none"}), False),
        (pb.ENDPOINT_RESPONSES, {"input": "hi", "tools": [RESPONSES_FUNCTION]}, True),
        (
            pb.ENDPOINT_RESPONSES,
            {"input": "hi", "tools": [RESPONSES_FUNCTION], "tool_choice": {"type": "function", "name": "f"}},
            True,
        ),
        (pb.ENDPOINT_RESPONSES, {"input": "hi", "tools": [{"type": "web_search"}]}, False),  # the engine's to refuse
        (pb.ENDPOINT_COUNT_TOKENS, chat(tools=[ANTHROPIC_TOOL]), False),  # counting calls nothing
    ],
)
def test_which_requests_may_be_answered_with_a_tool_call(endpoint: int, body: dict, may_call: bool) -> None:
    assert calls_tools(body, endpoint) is may_call


def test_tools_left_to_a_model_that_cannot_call_them_are_refused_naming_the_model() -> None:
    body = chat(tools=[FUNCTION])
    with pytest.raises(ApiError) as caught:
        check_tool_calling(body, pb.ENDPOINT_CHAT_COMPLETIONS, _model(True, "reasoning"))
    error = caught.value.body()["error"]
    assert caught.value.status == 400 and error["param"] == "tools" and error["code"] == "tools_unsupported"
    assert "`m`" in error["message"] and "tool_parser" in error["message"]
    check_tool_calling(body, pb.ENDPOINT_CHAT_COMPLETIONS, _model(True, "tools"))  # it can
    check_tool_calling(body, pb.ENDPOINT_CHAT_COMPLETIONS, _model(False))  # not known yet: the engine decides
    check_tool_calling(chat(tools=[FUNCTION], tool_choice="none"), pb.ENDPOINT_CHAT_COMPLETIONS, _model(True))
