"""One client battery, every engine: the official openai SDK through the router, as a team would use it.

Each case runs against `cluster up` (vLLM) and an mlx cluster (mlx-lm), the engines Orchard serves text with.
Where an engine cannot honour a parameter (`n`, `response_format` on mlx-lm) the router refuses it with
OpenAI's 400 naming the parameter and the engine; it never answers wrongly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import openai
import psutil
import pytest

from tests.conftest import Cluster, engine_metric, wait_until
from tests.e2e.conftest import UpCluster, client_of
from worker.shared import procs
from worker.shared.models import BUNDLED_NAME

pytestmark = [pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Served:
    engine: str
    url: str
    max_model_len: int
    busy: Callable[[], bool]  # is the engine generating?
    honours: frozenset[str] = field(default_factory=frozenset)  # of `n`, `response_format`

    @property
    def client(self) -> openai.OpenAI:
        return client_of(self.url)

    def ask(self, **extra: object) -> openai.types.chat.ChatCompletion:
        body = {"model": BUNDLED_NAME, "messages": QUESTION, "temperature": 0, "max_tokens": 30} | extra
        return self.client.chat.completions.create(**body)


def _vllm(up: UpCluster) -> Served:
    engine = up.engine_url
    return Served(
        "vllm",
        up.url,
        4096,
        lambda: engine_metric(engine, "vllm:num_requests_running") > 0,
        frozenset({"n", "response_format"}),
    )


def _cpu_busy(agent_pid: int) -> bool:
    """The engine's process tree used CPU over a quarter second (mlx-lm publishes no running count)."""
    tree = [psutil.Process(pid) for pid in procs.descendants(agent_pid)]
    before = sum(sum(p.cpu_times()[:2]) for p in tree)
    time.sleep(0.25)
    return sum(sum(p.cpu_times()[:2]) for p in tree) - before > 0.025


def _mlx(cluster: Cluster) -> Served:
    return Served("mlx", cluster.url, 8192, lambda: _cpu_busy(cluster.agent_pid))  # 8192: the model's config.json


@pytest.fixture(
    scope="package", params=[pytest.param("vllm", marks=pytest.mark.e2e), pytest.param("mlx", marks=pytest.mark.mlx)]
)
def served(request: pytest.FixtureRequest) -> Served:
    if request.param == "vllm":
        return _vllm(request.getfixturevalue("up"))
    return _mlx(request.getfixturevalue("mlx_cluster"))


def test_models_list_the_bundled_model_and_its_context(served: Served) -> None:
    [card] = served.client.models.list().data
    assert card.id == BUNDLED_NAME and card.model_extra and card.model_extra["max_model_len"] == served.max_model_len


def test_greedy_chat_knows_the_capital_of_france(served: Served) -> None:
    answer = served.ask()
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0


def test_a_stream_adds_up_to_the_whole_answer_and_its_usage(served: Served) -> None:
    whole = served.ask(max_tokens=20)
    stream = served.client.chat.completions.create(
        model=BUNDLED_NAME,
        messages=QUESTION,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len([p for p in pieces if p]) > 3 and "".join(pieces) == whole.choices[0].message.content
    assert [c.usage for c in chunks if c.usage] == [whole.usage]


def test_completions_endpoint(served: Served) -> None:
    result = served.client.completions.create(
        model=BUNDLED_NAME, prompt="The capital of France is", temperature=0, max_tokens=8
    )
    assert result.choices[0].text.strip()
    assert result.usage is not None and result.usage.completion_tokens > 0


def test_stop_sequences_end_the_answer_before_them(served: Served) -> None:
    whole = served.ask().choices[0].message.content or ""
    assert "Paris" in whole
    stopped = served.ask(stop=["Paris"]).choices[0]
    assert stopped.message.content == whole[: whole.index("Paris")] and stopped.finish_reason == "stop"


def test_n_is_honoured_exactly_or_refused(served: Served) -> None:
    if "n" not in served.honours:
        with pytest.raises(openai.BadRequestError) as caught:
            served.ask(n=2, max_tokens=8)
        assert caught.value.param == "n" and f"{served.engine} engine" in caught.value.message
        return
    two = served.ask(n=2, max_tokens=8, temperature=1.0, seed=3)
    assert [c.index for c in two.choices] == [0, 1] and all(c.message.content for c in two.choices)
    assert two.usage is not None and two.usage.completion_tokens <= 16


def test_response_format_is_honoured_exactly_or_refused(served: Served) -> None:
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "enum": ["Paris", "Lyon"]}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    if "response_format" not in served.honours:
        with pytest.raises(openai.BadRequestError) as caught:
            served.ask(response_format=response_format)
        assert caught.value.param == "response_format" and f"{served.engine} engine" in caught.value.message
        return
    answer = served.ask(response_format=response_format, max_tokens=40)
    assert json.loads(answer.choices[0].message.content or "") in ({"capital": "Paris"}, {"capital": "Lyon"})


def test_logprobs_come_back(served: Served) -> None:
    answer = served.ask(max_tokens=4, logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content if answer.choices[0].logprobs else None
    assert content and all(token.logprob <= 0 for token in content)
    assert all(len(token.top_logprobs) == 2 for token in content)


def test_streams_never_split_a_multibyte_character(served: Served) -> None:
    prompt = "🍎🍐🍊🍋🍌🍉🍇🍓🫐🍈🍒🍑🥭🍍🥥🥝 " * 3
    ask = {"model": BUNDLED_NAME, "prompt": prompt, "max_tokens": 48, "temperature": 0}
    whole = served.client.completions.create(**ask).choices[0].text
    pieces = [c.choices[0].text for c in served.client.completions.create(**ask, stream=True) if c.choices]
    assert any(ord(ch) > 0xFFFF for ch in whole), whole  # the model answered in emoji: 4-byte characters
    assert "".join(pieces) == whole  # a chunk ending inside a character would show as U+FFFD here only


def test_an_over_long_prompt_is_openais_400_not_a_hang(served: Served) -> None:
    long = [{"role": "user", "content": "word " * (served.max_model_len + 500)}]
    with pytest.raises(openai.BadRequestError) as caught:
        served.client.chat.completions.create(model=BUNDLED_NAME, messages=long, max_tokens=8)
    assert f"maximum context length is {served.max_model_len} tokens" in caught.value.message
    assert served.ask(max_tokens=4).choices[0].message.content  # still serving


def _chat(**fields: object) -> bytes:
    return json.dumps({"model": BUNDLED_NAME, "messages": QUESTION} | fields).encode()


BAD_INPUT = {
    "malformed": (b"{not json", 400, "JSON"),
    "missing-messages": (json.dumps({"model": BUNDLED_NAME}).encode(), 400, "messages"),
    "unknown-model": (_chat(model="gpt-17"), 404, "gpt-17"),
    "negative-max-tokens": (_chat(max_tokens=-1), 400, "max_tokens"),
    "huge-max-tokens": (_chat(max_tokens=10**9), 400, "{max_model_len}"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_then_still_serving(served: Served, case: str) -> None:
    body, status, needle = BAD_INPUT[case]
    response = httpx.post(
        served.url + "/v1/chat/completions", content=body, timeout=60, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert needle.format(max_model_len=served.max_model_len) in response.json()["error"]["message"]
    assert served.ask(max_tokens=2).choices[0].finish_reason in ("length", "stop")


def test_32_concurrent_streams_all_answer(served: Served) -> None:
    """More streams than the engine takes at once (mlx-lm alone drops connections at this load): the router's
    admission queue holds the excess to the workers' slots, so every stream is answered."""

    def one(i: int) -> str:
        stream = served.client.chat.completions.create(
            model=BUNDLED_NAME, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=12, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
    assert len(answers) == 32 and all(answers)


def test_a_client_that_leaves_stops_the_generation_within_2_s(served: Served) -> None:
    body = {"model": BUNDLED_NAME, "prompt": "Once upon a time", "max_tokens": 3000, "stream": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()  # kept referenced: a dropped iterator closes the stream early
        assert len([line for line, _ in zip(lines, range(8), strict=False) if line.startswith("data: ")]) >= 4
        assert served.busy()
    left = time.monotonic()
    wait_until(lambda: not served.busy(), 2, f"the {served.engine} engine idle after the client left", 0.05)
    print(f"\n{served.engine} engine idle {time.monotonic() - left:.2f} s after the client left")
