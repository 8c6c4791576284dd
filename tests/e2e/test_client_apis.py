"""Every client a team uses, with its own official client, through the router to real vLLM on the bundled model:
the Anthropic SDK (Messages, streaming, a tool-use round trip, count_tokens, its error types), the OpenAI SDK's
Responses API (continued on the worker that stored the response, with two workers serving the model) and the
Ollama client (chat, generate, list, show, embed). A stored response stays its team's."""

from __future__ import annotations

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
)  # fmt: skip
from tests.e2e.conftest import UpCluster
from worker.models import BUNDLED_NAME

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def claude(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)


def _usage_row(home: Path, request_id: str) -> sqlite3.Row:
    with sqlite3.connect(home / "gateway.db") as conn:
        conn.row_factory = sqlite3.Row
        return wait_until(lambda: conn.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone(),
                          10, "the usage row")  # fmt: skip


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


def test_anthropic_count_tokens_and_errors_in_the_sdks_own_types(up: UpCluster) -> None:
    client = claude(up.url)
    short = client.messages.count_tokens(model=BUNDLED_NAME, messages=[{"role": "user", "content": "Hi"}])
    longer = client.messages.count_tokens(model=BUNDLED_NAME, messages=QUESTION)
    assert 0 < short.input_tokens < longer.input_tokens
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=8, messages=QUESTION)
    assert missing.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": "The model `no-such-model` does not exist."}}  # fmt: skip
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
    parts = list(client.chat(model=BUNDLED_NAME, messages=QUESTION, stream=True,
                             options={"num_predict": 16, "temperature": 0}))  # fmt: skip
    assert parts[-1].done and not any(p.done for p in parts[:-1]) and parts[-1].eval_count
    assert "".join(p.message.content or "" for p in parts) == chat.message.content  # greedy: the same answer
    generated = client.generate(model=f"{BUNDLED_NAME}:latest", prompt="What is the capital of France?",
                                options={"num_predict": 16, "temperature": 0})  # fmt: skip
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
    """Two vLLM workers serving the bundled model behind one router (least loaded: both get traffic), with tool
    calls parsed (as a lab serving Claude Code would), and keys for two teams."""
    tmp = tmp_path_factory.mktemp("pair")
    tools = ("--enable-auto-tool-choice", "--tool-call-parser=hermes")
    agents = [agent_config("vllm", BUNDLED_NAME, tmp / "logs", engine_args=tools) for _ in range(2)]
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
    tools = [{"name": "get_weather", "description": "The weather in a city.", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]  # fmt: skip
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(model=BUNDLED_NAME, max_tokens=32, messages=ask, tools=tools,
                                   tool_choice={"type": "auto"}, extra_body={"temperature": 0})  # fmt: skip
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
    messages = [{"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "What is the capital of France?"}]  # fmt: skip
    answer = client.messages.create(model=BUNDLED_NAME, max_tokens=16, messages=messages,
                                    thinking={"type": "adaptive"}, extra_body={"temperature": 0})  # fmt: skip
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.usage.output_tokens > 0
    assert any(block.type == "text" and block.text.strip() for block in answer.content)


def test_responses_whole_and_streamed(pair: Pair) -> None:
    client = pair.client()
    answer = client.responses.create(model=BUNDLED_NAME, input="What is the capital of France?", max_output_tokens=24)
    assert answer.id.startswith("resp_") and answer.output_text.strip() and answer.usage
    assert answer.usage.input_tokens > 5 and answer.usage.output_tokens > 0
    with client.responses.stream(model=BUNDLED_NAME, input="What is the capital of France?",
                                 max_output_tokens=24) as stream:  # fmt: skip
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
        raw = client.responses.with_raw_response.create(model=BUNDLED_NAME, input=question, max_output_tokens=8,
                                                        previous_response_id=previous.id)  # fmt: skip
        turn = raw.parse()
        assert turn.usage and previous.usage and turn.usage.input_tokens > previous.usage.input_tokens  # history
        where.add(raw.headers["x-orchard-worker"])
        previous = turn
    assert where == {home}
    assert client.responses.retrieve(previous.id).id == previous.id
    # The other worker's engine does not have it: without the router's memory, half of these would fail.
    [other] = [a for a in pair.cluster.agents if agent_info(a.listen).worker_id != home]
    direct = httpx.post(agent_info(other.listen).engine_url + "/v1/responses", timeout=60, json={
        "model": BUNDLED_NAME, "input": "x", "previous_response_id": first.id})  # fmt: skip
    assert direct.status_code == 404

    def worker_of_a_new_one(_: int) -> str:
        fresh = client.responses.with_raw_response.create(model=BUNDLED_NAME, input="Hi", max_output_tokens=2,
                                                          store=False)  # fmt: skip
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
