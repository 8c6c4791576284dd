"""The other client APIs' pure parts: errors in each API's shape, stream framing, usage under each API's names,
the Responses API's stored-response id, and Ollama's requests and answers in OpenAI's terms."""

from __future__ import annotations

import json

import pytest

from cluster.router import ollama_shapes as shapes
from cluster.router.errors import ApiError, Dialect
from cluster.router.forwarding import error_event, response_id
from cluster.router.intake import Incoming
from cluster.router.routes import dialect_of
from cluster.router.validation import MessagesRequest, ResponsesRequest, validate
from cluster.routing.choose import RequestView
from cluster.routing.prompt import render_for_routing
from proto import orchard_pb2 as pb
from worker.service import usage_message


def test_each_api_gets_errors_in_its_own_shape() -> None:
    error = ApiError(404, "The model `x` does not exist.", param="model", code="model_not_found")
    assert error.body()["error"] == {
        "message": "The model `x` does not exist.",
        "type": "not_found_error",
        "param": "model",
        "code": "model_not_found",
    }
    anthropic = {"type": "not_found_error", "message": "The model `x` does not exist."}
    assert error.body(Dialect.ANTHROPIC) == {"type": "error", "error": anthropic}
    assert error.body(Dialect.OLLAMA) == {"error": "The model `x` does not exist."}
    kinds = {s: ApiError(s, "m").body(Dialect.ANTHROPIC)["error"]["type"] for s in (401, 413, 429, 500, 503, 504)}
    assert kinds == {
        401: "authentication_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        503: "overloaded_error",
        504: "timeout_error",
    }
    assert [dialect_of(p) for p in ("/v1/messages", "/v1/messages/count_tokens", "/api/chat", "/v1/nope")] == [
        Dialect.ANTHROPIC,
        Dialect.ANTHROPIC,
        Dialect.OLLAMA,
        Dialect.OPENAI,
    ]


def _incoming(endpoint: pb.Endpoint, dialect: Dialect) -> Incoming:
    return Incoming("id", endpoint, dialect, "m", True, False, b"{}", RequestView("m", None, (), 0))


def test_a_stream_that_fails_ends_in_its_apis_framing() -> None:
    error = ApiError(503, "worker unavailable", code="worker_unavailable")
    chat = error_event(error, _incoming(pb.ENDPOINT_CHAT_COMPLETIONS, Dialect.OPENAI))
    assert chat.endswith(b"data: [DONE]\n\n") and b'"code": "worker_unavailable"' in chat
    messages = error_event(error, _incoming(pb.ENDPOINT_MESSAGES, Dialect.ANTHROPIC))
    name, data = messages.removesuffix(b"\n\n").split(b"\n")
    assert name == b"event: error" and json.loads(data[6:])["error"]["type"] == "overloaded_error"
    responses = error_event(error, _incoming(pb.ENDPOINT_RESPONSES, Dialect.OPENAI))
    assert json.loads(responses.split(b"data: ")[1]) == {
        "type": "error",
        "code": "worker_unavailable",
        "message": "worker unavailable",
        "param": None,
    }
    assert b"[DONE]" not in messages + responses


def test_usage_is_counted_under_every_apis_names() -> None:
    openai = usage_message(
        {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 4}}
    )
    responses = usage_message(
        {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10, "input_tokens_details": {"cached_tokens": 4}}
    )
    anthropic = usage_message({"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 4})
    assert (
        openai
        == responses
        == anthropic
        == pb.Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10, cached_prompt_tokens=4)
    )
    assert not usage_message({"input_tokens": 2}).HasField("cached_prompt_tokens")


def test_the_stored_response_id_is_read_from_a_whole_answer_or_the_streams_first_event() -> None:
    whole = pb.GenerateReply(response=b'{"id": "resp_1", "object": "response", "store": true}')
    created = b'{"type": "response.created", "response": {"id": "resp_2", "store": true}}'
    stream = pb.GenerateReply(chunks=pb.Chunks(items=[created], events=["response.created"]))
    unstored = pb.GenerateReply(response=b'{"id": "resp_3", "store": false}')
    assert [response_id(r) for r in (whole, stream, unstored)] == ["resp_1", "resp_2", None]
    assert response_id(pb.GenerateReply(response=b"not json")) is None


def test_new_bodies_are_validated_like_chat() -> None:
    turn = [{"role": "user", "content": "hi"}]
    with pytest.raises(ApiError, match="max_tokens"):
        validate({"model": "m", "messages": turn}, MessagesRequest)  # Anthropic requires it
    with pytest.raises(ApiError, match="temperature"):
        validate({"model": "m", "messages": turn, "max_tokens": 5, "temperature": 1.5}, MessagesRequest)
    with pytest.raises(ApiError, match="previous_response_id"):
        validate({"model": "m", "input": "hi", "previous_response_id": "../../etc"}, ResponsesRequest)
    asked = validate({"model": "m", "messages": turn, "max_tokens": 5, "metadata": {"user_id": "ann"}}, MessagesRequest)
    assert asked.requested_tokens() == 5 and asked.user == "ann"  # the user id pins a session as OpenAI's does


def test_current_anthropic_clients_requests_are_accepted_as_they_send_them() -> None:
    """What the anthropic SDK 2.x and Claude Code send: system turns inside `messages`, adaptive thinking,
    output_config and context_management (passed to vLLM's /v1/messages, which takes them)."""
    sent = {
        "model": "m",
        "max_tokens": 64,
        "messages": [
            {"role": "system", "content": "You are Claude Code."},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        ],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "low"},
        "metadata": {"user_id": "u"},
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
    }
    asked = validate(sent, MessagesRequest)
    assert [m.role for m in asked.messages] == ["system", "user", "system"]
    assert asked.model_dump()["thinking"] == {"type": "adaptive"}  # passed through unchanged
    with pytest.raises(ApiError, match=r"messages\.0\.role"):
        validate({**sent, "messages": [{"role": "tool", "content": "x"}]}, MessagesRequest)


def test_every_field_and_role_the_pinned_anthropic_sdk_can_send_is_accepted() -> None:
    """Read from the SDK's own request types (pinned in the dev extra): when a newer SDK adds a field or a
    message role that Orchard's validation refuses, this fails on the version bump, not in a user's agent."""
    import typing

    from anthropic.types import MessageParam
    from anthropic.types.message_create_params import MessageCreateParamsBase

    roles = [typing.get_args(typing.get_type_hints(kind)["role"])[0] for kind in typing.get_args(MessageParam)]
    known: dict[str, object] = {
        "model": "m",
        "max_tokens": 16,
        "messages": [{"role": role, "content": "hi"} for role in roles],
        "system": "s",
        "tools": [],
        "metadata": {"user_id": "u"},
        "stop_sequences": ["x"],
        "thinking": {"type": "adaptive"},
        "tool_choice": {"type": "auto"},
    }
    fields = typing.get_type_hints(MessageCreateParamsBase)
    body = {name: known.get(name, {"as": "the SDK sends it"}) for name in fields}
    assert {"user", "assistant", "system"} <= set(roles) and "thinking" in fields
    asked = validate(body, MessagesRequest)
    assert [m.role for m in asked.messages] == roles and set(asked.model_dump()) >= set(fields)


def test_routing_reads_system_prompts_and_responses_input_as_turns() -> None:
    anthropic = {"system": "Be brief.", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    responses = {"instructions": "Be brief.", "input": "Hi"}
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert render_for_routing(anthropic) == render_for_routing(responses) == render_for_routing(chat)


def test_ollama_chat_becomes_openai_chat_with_its_options() -> None:
    ask = validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "format": "json",
            "options": {"num_predict": 8, "temperature": 0, "repeat_penalty": 1.1, "mirostat": 1},
        },
        shapes.OllamaChat,
    )
    body = shapes.chat_body(ask)
    assert body == {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 8,
        "temperature": 0,
        "repetition_penalty": 1.1,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "hi"}],
    }
    unlimited = validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": False, "options": {"num_predict": -1}},
        shapes.OllamaChat,
    )
    assert "max_tokens" not in shapes.chat_body(unlimited) and "stream_options" not in shapes.chat_body(unlimited)


def test_ollama_generate_is_a_chat_unless_raw() -> None:
    templated = validate({"model": "m", "prompt": "Why?", "system": "Be brief."}, shapes.OllamaGenerate)
    assert shapes.generate_body(templated)[1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?"},
    ]
    raw = validate({"model": "m", "prompt": "Why?", "raw": True}, shapes.OllamaGenerate)
    assert shapes.generate_body(raw) == (
        False,
        {"model": "m", "stream": True, "prompt": "Why?", "stream_options": {"include_usage": True}},
    )


def test_ollama_tool_calls_travel_both_ways() -> None:
    call = {"function": {"name": "weather", "arguments": {"city": "Paris"}}}
    ask = validate(
        {"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": [call]}]}, shapes.OllamaChat
    )
    [sent] = shapes.chat_body(ask)["messages"][0]["tool_calls"]
    assert sent["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
    reply = shapes.Reply("m", chat=True)
    answer = reply.whole(
        {
            "choices": [{"finish_reason": "tool_calls", "message": {"content": None, "tool_calls": [sent]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9},
        }
    )
    assert answer["message"]["tool_calls"] == [call] and answer["done_reason"] == "tool_calls"
    assert answer["prompt_eval_count"] == 5 and answer["eval_count"] == 9 and answer["done"] is True


def test_an_ollama_stream_is_lines_of_text_then_a_last_line_with_the_counts() -> None:
    reply = shapes.Reply("m", chat=False)
    chunks = [
        {"choices": [{"text": "Par"}]},
        {"choices": [{"text": ""}]},
        {"choices": [{"text": "is", "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]
    lines = [reply.chunk(c) for c in chunks]
    assert lines[1] == []
    assert [line["response"] for batch in lines for line in batch] == ["Par", "is", ""]
    [last] = lines[-1]
    assert last["done"] is True and last["done_reason"] == "length" and last["eval_count"] == 2
    assert shapes.Reply("m", chat=True).chunk({"error": "worker unavailable"}) == [{"error": "worker unavailable"}]
    templated = shapes.Reply("m", chat=False, from_chat=True)  # /api/generate answered by a chat
    answer = templated.whole({"choices": [{"message": {"content": "Paris"}}], "usage": {}})
    assert answer["response"] == "Paris" and "message" not in answer


def test_a_streamed_tool_call_goes_out_whole_once_its_fragments_are_in() -> None:
    reply = shapes.Reply("m", chat=True)
    fragments = [
        {"index": 0, "id": "c1", "function": {"name": "weather", "arguments": '{"ci'}},
        {"index": 0, "function": {"arguments": 'ty": "Paris"}'}},
    ]
    assert reply.chunk({"choices": [{"delta": {"tool_calls": [fragments[0]]}}]}) == []
    [line] = reply.chunk({"choices": [{"delta": {"tool_calls": [fragments[1]]}, "finish_reason": "tool_calls"}]})
    assert line["message"]["tool_calls"] == [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}]
    [last] = reply.chunk({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 9}})
    assert last["done"] and last["done_reason"] == "tool_calls" and reply.finished


def test_a_clients_malformed_ollama_tool_call_is_carried_not_a_crash() -> None:
    ask = validate(
        {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": None}, {}]}]}, shapes.OllamaChat
    )
    calls = shapes.chat_body(ask)["messages"][0]["tool_calls"]
    assert [c["function"] for c in calls] == [{"name": "", "arguments": "{}"}] * 2
