"""Every client a team uses, with its own official client, through the router to real vLLM on the bundled model:
the Anthropic SDK (Messages, streaming, a tool-use round trip, count_tokens, its error types), the OpenAI SDK's
Responses API (continued on the worker that stored the response, with two workers serving the model) and the
Ollama client (chat, generate, list, show, embed). A stored response stays its team's."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.conftest import (
    Cluster,
    agent_config,
    agent_info,
    run_cli,
    start_cluster,
    stop_cluster,
    wait_until,
    workers,
)
from tests.e2e.conftest import UpCluster, tool_model
from tests.e2e.weather import (
    ANTHROPIC_TOOLS,
    CHAT_TOOLS,
    GREEDY,
    PARIS,
    RESPONSES_TOOLS,
    WEATHER,
    anthropic_turns,
    chat_turns,
    ollama_turns,
    responses_input,
)
from worker.shared.models import BUNDLED_NAME

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def claude(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)


def _usage_row(home: Path, request_id: str) -> sqlite3.Row:
    with sqlite3.connect(home / "gateway.db") as conn:
        conn.row_factory = sqlite3.Row
        return wait_until(
            lambda: conn.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone(),
            10,
            "the usage row",
        )


def test_anthropic_messages_whole_and_billed_as_the_engine_counted(up: UpCluster) -> None:
    raw = claude(up.url).messages.with_raw_response.create(model=BUNDLED_NAME, max_tokens=24, messages=QUESTION)
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "text"
    assert message.content[0].text.strip() and message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 5 and 0 < message.usage.output_tokens <= 24
    row = _usage_row(up.home, raw.headers["x-request-id"])  # Anthropic's names, counted as the contract counts
    assert (row["prompt_tokens"], row["completion_tokens"]) == (message.usage.input_tokens, message.usage.output_tokens)


def test_anthropic_stream_is_parsed_whole_by_the_sdk(up: UpCluster) -> None:
    with claude(up.url).messages.stream(model=BUNDLED_NAME, max_tokens=24, messages=QUESTION) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert final.content[0].type == "text" and final.content[0].text.strip()
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")


def test_tools_left_to_a_model_that_cannot_call_them_are_refused_in_each_apis_shape(up: UpCluster) -> None:
    """The bundled model's own template renders no tools: no parser, so no `tools` capability; a request that
    may be answered with a tool call gets a 400 naming the model (the engine would answer about its own flags, or
    return the call as text); `tool_choice: none` is answered."""
    listed = httpx.get(up.url + "/v1/models").json()["data"]
    assert [m["capabilities"] for m in listed] == [[]]
    status = run_cli(["status", "--json"], up.home, timeout_s=60)
    assert '"capabilities": []' in status.stdout and '"context_length": 4096' in status.stdout, status.stdout
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as chat:
        up.client.chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, tools=tools, max_tokens=8)
    assert chat.value.code == "tools_unsupported" and f"`{BUNDLED_NAME}`" in chat.value.message
    with pytest.raises(anthropic.BadRequestError) as messages:
        claude(up.url).messages.create(
            model=BUNDLED_NAME,
            max_tokens=8,
            messages=QUESTION,
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
        )
    assert messages.value.body["error"]["type"] == "invalid_request_error" and "cannot call tools" in str(
        messages.value
    )
    named = {"type": "function", "function": {"name": "f"}}  # vLLM needs the parser for a named tool too
    with pytest.raises(openai.BadRequestError):
        up.client.chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, tools=tools, tool_choice=named)
    plain = up.client.chat.completions.create(
        model=BUNDLED_NAME, messages=QUESTION, tools=tools, tool_choice="none", max_tokens=4
    )
    assert plain.choices[0].message.content


def test_anthropic_count_tokens_and_errors_in_the_sdks_own_types(up: UpCluster) -> None:
    client = claude(up.url)
    short = client.messages.count_tokens(model=BUNDLED_NAME, messages=[{"role": "user", "content": "Hi"}])
    longer = client.messages.count_tokens(model=BUNDLED_NAME, messages=QUESTION)
    assert 0 < short.input_tokens < longer.input_tokens
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=8, messages=QUESTION)
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `no-such-model` does not exist."},
    }
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        client.messages.create(model=BUNDLED_NAME, max_tokens=8, messages=QUESTION, extra_body={"temperature": 1.5})
    refused = httpx.post(up.url + "/v1/messages", content=b"{", headers={"content-type": "application/json"})
    assert refused.status_code == 400 and refused.json()["type"] == "error"


def test_ollama_client_chat_generate_list_and_show(up: UpCluster) -> None:
    client = ollama.Client(host=up.url, timeout=300)
    assert BUNDLED_NAME in [m.model for m in client.list().models]
    chat = client.chat(model=BUNDLED_NAME, messages=QUESTION, options={"num_predict": 16, "temperature": 0})
    assert chat.done and chat.message.role == "assistant" and chat.message.content.strip()
    assert chat.prompt_eval_count and chat.prompt_eval_count > 5 and 0 < (chat.eval_count or 0) <= 16
    parts = list(
        client.chat(model=BUNDLED_NAME, messages=QUESTION, stream=True, options={"num_predict": 16, "temperature": 0})
    )
    assert parts[-1].done and not any(p.done for p in parts[:-1]) and parts[-1].eval_count
    assert "".join(p.message.content or "" for p in parts) == chat.message.content  # greedy: the same answer
    generated = client.generate(
        model=f"{BUNDLED_NAME}:latest",
        prompt="What is the capital of France?",
        options={"num_predict": 16, "temperature": 0},
    )
    assert generated.done and generated.response == chat.message.content  # generate applies the chat template
    assert "completion" in (client.show(BUNDLED_NAME).capabilities or [])
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model", messages=QUESTION)
    assert missing.value.status_code == 404 and "no-such-model" in missing.value.error
    assert httpx.get(up.url + "/api/version").json()["version"]


def test_ollama_embed(embedder: str) -> None:
    texts = ["The cat sat on the mat.", "Quarterly revenue rose by four percent."]
    result = ollama.Client(host=embedder, timeout=300).embed(model=BUNDLED_NAME, input=texts)
    assert len(result.embeddings) == 2 and {len(v) for v in result.embeddings} == {576}
    assert result.prompt_eval_count and result.prompt_eval_count > 0


@dataclass
class Pair:
    """Two vLLM workers behind a router with keys on: a key per team ("ml", "web") and an admin's ("ops")."""

    cluster: Cluster
    keys: dict[str, str]

    @property
    def url(self) -> str:
        return self.cluster.url

    def client(self, team: str = "ml") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.keys[team], max_retries=0, timeout=300)

    def claude(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=self.keys["ml"], max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two vLLM workers serving the bundled model behind one router (least loaded: both get traffic), with a
    chat template that renders tools, so that Orchard turns vLLM's tool-call parsing on (as a lab serving Claude
    Code needs), and keys for two teams."""
    tmp = tmp_path_factory.mktemp("pair")
    model = str(tool_model(tmp / "smollm2-tools"))
    agents = [agent_config("vllm", model, tmp / "logs", served=BUNDLED_NAME) for _ in range(2)]
    cluster = start_cluster(tmp, agents, policy="least_loaded", gateway_db=str(tmp / "gateway.db"))
    try:
        keys = {team: _new_key(tmp, "--team", team) for team in ("ml", "web")}
        keys["ops"] = _new_key(tmp, "--team", "ops", "--admin")
        wait_until(lambda: workers(cluster.url, keys["ops"]), 5, "the keys to be known")
        yield Pair(cluster, keys)
    finally:
        stop_cluster(cluster)


def _new_key(home: Path, *args: str) -> str:
    made = run_cli(["keys", "create", *args], home, timeout_s=60)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_anthropic_tool_use_round_trip(pair: Pair) -> None:
    """Tools out, a tool call back, its result in, an answer out. Whether a 135M model calls the tool by itself is
    up to the model (and vLLM's Anthropic adapter answers 400 when forced arguments are not an object), so the
    call is the one a client would have got; every turn goes through the router and the engine in Anthropic's
    shapes."""
    client = pair.claude()  # its engines parse tool calls (--enable-auto-tool-choice)
    tools = [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(
        model=BUNDLED_NAME,
        max_tokens=32,
        messages=ask,
        tools=tools,
        tool_choice={"type": "auto"},
        extra_body={"temperature": 0},
    )
    assert first.content and first.stop_reason in ("tool_use", "end_turn", "max_tokens")
    call = {"type": "tool_use", "id": "toolu_orchard_1", "name": "get_weather", "input": {"city": "Paris"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_orchard_1", "content": "Sunny, 21 degrees."}
    turns = [*ask, {"role": "assistant", "content": [call]}, {"role": "user", "content": [result]}]
    answer = client.messages.create(model=BUNDLED_NAME, max_tokens=32, messages=turns, tools=tools)
    assert answer.content and answer.usage.input_tokens > first.usage.input_tokens  # the call and result went in
    with client.messages.stream(model=BUNDLED_NAME, max_tokens=16, messages=turns, tools=tools) as stream:
        streamed = stream.get_final_message()
    assert streamed.usage.input_tokens == answer.usage.input_tokens


def test_a_request_as_current_anthropic_clients_send_it_is_answered(pair: Pair) -> None:
    """System turns inside `messages` and adaptive thinking, as the anthropic SDK 2.x and Claude Code send them
    (Claude Code's first request got a 400 from the router before)."""
    client = pair.claude()
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    answer = client.messages.create(
        model=BUNDLED_NAME,
        max_tokens=16,
        messages=messages,
        thinking={"type": "adaptive"},
        extra_body={"temperature": 0},
    )
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.usage.output_tokens > 0
    assert any(block.type == "text" and block.text.strip() for block in answer.content)


def test_responses_whole_and_streamed(pair: Pair) -> None:
    client = pair.client()
    answer = client.responses.create(model=BUNDLED_NAME, input="What is the capital of France?", max_output_tokens=24)
    assert answer.id.startswith("resp_") and answer.output_text.strip() and answer.usage
    assert answer.usage.input_tokens > 5 and answer.usage.output_tokens > 0
    with client.responses.stream(
        model=BUNDLED_NAME, input="What is the capital of France?", max_output_tokens=24
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and final.output_text.strip()


def test_previous_response_id_continues_on_the_worker_that_stored_it(pair: Pair) -> None:
    client = pair.client()
    raw = client.responses.with_raw_response.create(model=BUNDLED_NAME, input="My name is Ada.", max_output_tokens=8)
    first, home = raw.parse(), raw.headers["x-orchard-worker"]
    previous, where = first, set()
    for question in ("What is my name?", "Say it again.", "Once more.", "And again."):
        raw = client.responses.with_raw_response.create(
            model=BUNDLED_NAME, input=question, max_output_tokens=8, previous_response_id=previous.id
        )
        turn = raw.parse()
        assert turn.usage and previous.usage and turn.usage.input_tokens > previous.usage.input_tokens  # history
        where.add(raw.headers["x-orchard-worker"])
        previous = turn
    assert where == {home}
    assert client.responses.retrieve(previous.id).id == previous.id
    # The other worker's engine does not have it: without the router's memory, half of these would fail.
    [other] = [a for a in pair.cluster.agents if agent_info(a.listen).worker_id != home]
    direct = httpx.post(
        agent_info(other.listen).engine_url + "/v1/responses",
        timeout=60,
        json={"model": BUNDLED_NAME, "input": "x", "previous_response_id": first.id},
    )
    assert direct.status_code == 404

    def worker_of_a_new_one(_: int) -> str:
        fresh = client.responses.with_raw_response.create(
            model=BUNDLED_NAME, input="Hi", max_output_tokens=2, store=False
        )
        return fresh.headers["x-orchard-worker"]

    with ThreadPoolExecutor(4) as pool:  # at once: least loaded spreads them
        spread = set(pool.map(worker_of_a_new_one, range(4)))
    assert len(spread) == 2  # new conversations still go to both workers


def test_another_teams_key_can_neither_read_nor_continue_a_stored_response(pair: Pair) -> None:
    mine = pair.client("ml").responses.create(model=BUNDLED_NAME, input="Ship on Friday.", max_output_tokens=4)
    theirs = pair.client("web")
    with pytest.raises(openai.NotFoundError) as read:
        theirs.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as continued:
        theirs.responses.create(model=BUNDLED_NAME, input="Go on.", previous_response_id=mine.id, max_output_tokens=4)
    for refused in (read.value, continued.value):
        assert refused.code == "response_not_found" and "by another team" in refused.message
    assert continued.value.param == "previous_response_id"
    assert pair.client("ml").responses.retrieve(mine.id).id == mine.id  # its own team still can


def test_tool_calling_is_on_for_a_model_whose_template_renders_tools(pair: Pair) -> None:
    """Chosen from the model's files by the agent; reported as a capability to the router, /v1/models, Ollama's
    show, and the workers' rows `cluster status` draws."""
    listed = httpx.get(pair.url + "/v1/models", headers={"authorization": f"Bearer {pair.keys['ml']}"}).json()
    assert [m["capabilities"] for m in listed["data"]] == [["tools"]]
    shown = ollama.Client(host=pair.url, headers={"authorization": f"Bearer {pair.keys['ml']}"}).show(BUNDLED_NAME)
    assert shown.capabilities is not None and "tools" in shown.capabilities and "completion" in shown.capabilities
    for row in workers(pair.url, pair.keys["ops"]):
        assert [(f.name, f.capabilities) for f in row.model_facts] == [(BUNDLED_NAME, ["tools"])]


def test_the_same_tool_call_comes_out_of_every_api(pair: Pair) -> None:
    chat = pair.client().chat.completions.create(
        model=BUNDLED_NAME, messages=chat_turns(), tools=CHAT_TOOLS, max_tokens=40, temperature=0
    )
    [call] = chat.choices[0].message.tool_calls or []
    assert chat.choices[0].finish_reason == "tool_calls" and call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == (WEATHER, PARIS)
    message = pair.claude().messages.create(
        model=BUNDLED_NAME, messages=anthropic_turns(), tools=ANTHROPIC_TOOLS, max_tokens=40, extra_body=GREEDY
    )
    [use] = [block for block in message.content if block.type == "tool_use"]
    assert message.stop_reason == "tool_use" and (use.name, use.input) == (WEATHER, PARIS)
    response = pair.client().responses.create(
        model=BUNDLED_NAME, input=responses_input(), tools=RESPONSES_TOOLS, max_output_tokens=40, temperature=0
    )
    [item] = [item for item in response.output if item.type == "function_call"]
    assert (item.name, json.loads(item.arguments)) == (WEATHER, PARIS) and item.call_id
    local = ollama.Client(host=pair.url, headers={"authorization": f"Bearer {pair.keys['ml']}"})
    said = local.chat(
        model=BUNDLED_NAME, messages=ollama_turns(), tools=CHAT_TOOLS, options={"temperature": 0, "num_predict": 40}
    )
    [asked] = said.message.tool_calls or []
    assert (asked.function.name, dict(asked.function.arguments)) == (WEATHER, PARIS)


def test_a_named_tool_comes_back_as_a_structured_call(pair: Pair) -> None:
    """`tool_choice` naming the tool, in the three APIs that have one: a call, never text."""
    chat = pair.client().chat.completions.create(
        model=BUNDLED_NAME,
        messages=chat_turns(),
        tools=CHAT_TOOLS,
        tool_choice={"type": "function", "function": {"name": WEATHER}},
        max_tokens=40,
        temperature=0,
    )
    [call] = chat.choices[0].message.tool_calls or []
    assert call.function.name == WEATHER and json.loads(call.function.arguments) == PARIS
    message = pair.claude().messages.create(
        model=BUNDLED_NAME,
        messages=anthropic_turns(),
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": WEATHER},
        max_tokens=40,
        extra_body=GREEDY,
    )
    [use] = [block for block in message.content if block.type == "tool_use"]
    assert use.name == WEATHER and use.input == PARIS
    response = pair.client().responses.create(
        model=BUNDLED_NAME,
        input=responses_input(),
        tools=RESPONSES_TOOLS,
        tool_choice={"type": "function", "name": WEATHER},
        max_output_tokens=40,
        temperature=0,
    )
    [item] = [item for item in response.output if item.type == "function_call"]
    assert item.name == WEATHER and json.loads(item.arguments) == PARIS


def test_tool_calls_stream_in_each_apis_own_events(pair: Pair) -> None:
    fragments = pair.client().chat.completions.create(
        model=BUNDLED_NAME, messages=chat_turns(), tools=CHAT_TOOLS, max_tokens=40, temperature=0, stream=True
    )
    deltas = [d for chunk in fragments for choice in chunk.choices for d in choice.delta.tool_calls or []]
    assert deltas and deltas[0].function and deltas[0].function.name == WEATHER and deltas[0].id
    assert json.loads("".join(d.function.arguments or "" for d in deltas if d.function)) == PARIS
    with pair.claude().messages.stream(
        model=BUNDLED_NAME, messages=anthropic_turns(), tools=ANTHROPIC_TOOLS, max_tokens=40, extra_body=GREEDY
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    assert final.stop_reason == "tool_use" and [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [
        (WEATHER, PARIS)
    ]
    with pair.client().responses.stream(
        model=BUNDLED_NAME, input=responses_input(), tools=RESPONSES_TOOLS, max_output_tokens=40, temperature=0
    ) as streamed:
        kinds = [event.type for event in streamed]
        response = streamed.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    assert [json.loads(o.arguments) for o in response.output if o.type == "function_call"] == [PARIS]
    local = ollama.Client(host=pair.url, headers={"authorization": f"Bearer {pair.keys['ml']}"})
    lines = list(
        local.chat(
            model=BUNDLED_NAME,
            messages=ollama_turns(),
            tools=CHAT_TOOLS,
            stream=True,
            options={"temperature": 0, "num_predict": 40},
        )
    )
    calls = [call for line in lines for call in line.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [(WEATHER, PARIS)] and lines[-1].done


def test_the_tool_result_turn_is_accepted_and_answered(pair: Pair) -> None:
    result = "Cloudy, 15 degrees."
    call = {"id": "call_9", "type": "function", "function": {"name": WEATHER, "arguments": json.dumps(PARIS)}}
    with_result = [
        *chat_turns(),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_9", "content": result},
    ]
    chat = pair.client().chat.completions.create(
        model=BUNDLED_NAME, messages=with_result, tools=CHAT_TOOLS, max_tokens=24, temperature=0
    )
    assert chat.choices[0].message.content or chat.choices[0].message.tool_calls
    use = {"type": "tool_use", "id": "toolu_9", "name": WEATHER, "input": PARIS}
    answer = {"type": "tool_result", "tool_use_id": "toolu_9", "content": result}
    anthropic_result = [
        *anthropic_turns(),
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [answer]},
    ]
    message = pair.claude().messages.create(
        model=BUNDLED_NAME, messages=anthropic_result, tools=ANTHROPIC_TOOLS, max_tokens=24, extra_body=GREEDY
    )
    assert message.content and message.stop_reason in ("end_turn", "tool_use", "max_tokens")
    items = [
        *responses_input(),
        {"type": "function_call", "call_id": "call_9", "name": WEATHER, "arguments": json.dumps(PARIS)},
        {"type": "function_call_output", "call_id": "call_9", "output": result},
    ]
    response = pair.client().responses.create(
        model=BUNDLED_NAME, input=items, tools=RESPONSES_TOOLS, max_output_tokens=24, temperature=0
    )
    assert response.status == "completed" and response.output
    local = ollama.Client(host=pair.url, headers={"authorization": f"Bearer {pair.keys['ml']}"})
    ollama_result = [
        *ollama_turns(),
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": WEATHER, "arguments": PARIS}}]},
        {"role": "tool", "content": result},
    ]
    said = local.chat(model=BUNDLED_NAME, messages=ollama_result, tools=CHAT_TOOLS, options={"num_predict": 24})
    assert said.done and (said.message.content or said.message.tool_calls)


def test_a_response_whose_worker_is_gone_gets_a_clear_error(pair: Pair) -> None:
    client = pair.client()
    raw = client.responses.with_raw_response.create(model=BUNDLED_NAME, input="Hello.", max_output_tokens=4)
    stored, home = raw.parse(), raw.headers["x-orchard-worker"]
    index = next(i for i, agent in enumerate(pair.cluster.agents) if agent_info(agent.listen).worker_id == home)
    [child] = [c for c in pair.cluster.fleet.children if c.name == f"agent-{index}"]
    pair.cluster.fleet.stop(child)
    ops = pair.keys["ops"]
    wait_until(lambda: not all(row.ready for row in workers(pair.url, ops)), 30, "the router to see the worker gone")
    with pytest.raises(openai.APIStatusError) as gone:
        client.responses.create(model=BUNDLED_NAME, input="Go on.", previous_response_id=stored.id)
    assert gone.value.status_code == 503 and "is not serving now" in gone.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_never_made_here")
    assert client.responses.create(model=BUNDLED_NAME, input="Hi", max_output_tokens=2).output_text is not None
