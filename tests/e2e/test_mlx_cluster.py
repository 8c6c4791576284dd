"""One agent on the mlx engine (mlx-lm's server, MLX on this machine's CPU or a Mac's GPU) with the bundled
model, through the router, with the official openai SDK. The macOS CI workflow runs this on Apple Silicon."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest

from tests.conftest import Cluster, agent_config, start_cluster, stop_cluster, wait_until, workers
from worker import procs
from worker.models import BUNDLED_NAME

pytestmark = [pytest.mark.slow, pytest.mark.mlx]
pytest.importorskip("mlx_lm", reason="the mlx engine needs the `mlx` extra (mlx, mlx-lm)")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def mlx_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("mlx")
    cluster = start_cluster(tmp, [agent_config("mlx", BUNDLED_NAME, tmp / "logs")])
    yield cluster
    stop_cluster(cluster)


def client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_greedy_chat_answers_from_the_bundled_model(mlx_cluster: Cluster) -> None:
    answer = client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, temperature=0,
                                                         max_tokens=30)  # fmt: skip
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.completion_tokens > 0


def test_a_stream_adds_up_to_the_whole_answer(mlx_cluster: Cluster) -> None:
    whole = client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, temperature=0,
                                                        max_tokens=20)  # fmt: skip
    stream = client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, temperature=0,
                                                         max_tokens=20, stream=True)  # fmt: skip
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) > 3 and "".join(pieces) == whole.choices[0].message.content


def test_n_and_response_format_are_refused_not_faked(mlx_cluster: Cluster) -> None:
    for extra, param in (({"n": 2}, "n"), ({"response_format": {"type": "json_object"}}, "response_format")):
        with pytest.raises(openai.BadRequestError) as caught:
            client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, max_tokens=8,
                                                        **extra)  # fmt: skip
        assert caught.value.param == param and "mlx engine" in caught.value.message


def test_an_over_long_prompt_is_openais_400_not_a_hang(mlx_cluster: Cluster) -> None:
    cards = client(mlx_cluster).models.list().data
    assert cards[0].model_extra and cards[0].model_extra["max_model_len"] == 8192  # from the model's config.json
    long = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(openai.BadRequestError) as caught:
        client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=long, max_tokens=8)
    assert "maximum context length is 8192 tokens" in caught.value.message
    after = client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, max_tokens=4)
    assert after.choices[0].message.content  # the engine never saw it: still serving


def test_32_concurrent_streams_all_answer(mlx_cluster: Cluster) -> None:
    """mlx-lm's server alone drops connections at this load; the router's admission queue holds the excess
    to the agent's slots (--max-concurrency), so every stream is answered."""

    def one(i: int) -> str:
        stream = client(mlx_cluster).chat.completions.create(
            model=BUNDLED_NAME, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=12, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
    assert len(answers) == 32 and all(answers)


def _engine_busy(cluster: Cluster) -> float:
    """CPU seconds the engine process tree uses over half a second (mlx-lm publishes no running count)."""
    tree = [psutil.Process(pid) for pid in procs.descendants(cluster.agent_pid)]  # the engine and its children
    before = sum(p.cpu_times().user + p.cpu_times().system for p in tree)
    time.sleep(0.5)
    return sum(p.cpu_times().user + p.cpu_times().system for p in tree) - before


def test_a_client_that_leaves_stops_the_generation(mlx_cluster: Cluster) -> None:
    body = {"model": BUNDLED_NAME, "prompt": "Once upon a time", "max_tokens": 4000, "stream": True}
    with httpx.stream("POST", mlx_cluster.url + "/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        assert len([line for line, _ in zip(lines, range(8), strict=False) if line.startswith("data: ")]) >= 4
        assert _engine_busy(mlx_cluster) > 0.2  # generating
    started = time.monotonic()
    wait_until(lambda: _engine_busy(mlx_cluster) < 0.05, 10, "the mlx engine idle after the client left")
    print(f"\nmlx engine idle {time.monotonic() - started:.1f}s after the client left")


def test_streams_never_split_a_multibyte_character(mlx_cluster: Cluster) -> None:
    prompt = "🍎🍐🍊🍋🍌🍉🍇🍓🫐🍈🍒🍑🥭🍍🥥🥝 " * 3
    ask = {"model": BUNDLED_NAME, "prompt": prompt, "max_tokens": 48, "temperature": 0}
    whole = client(mlx_cluster).completions.create(**ask).choices[0].text
    stream = client(mlx_cluster).completions.create(**ask, stream=True)
    pieces = [c.choices[0].text for c in stream if c.choices]
    assert any(ord(ch) > 0xFFFF for ch in whole), whole  # the model answered in emoji: 4-byte characters
    assert "".join(pieces) == whole  # a chunk ending inside a character would show as U+FFFD here only


def test_mlx_workers_report_speeds_measured_from_their_traffic(mlx_cluster: Cluster) -> None:
    for _ in range(3):  # mlx-lm has no /metrics: the agent counts what it relays
        stream = client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, max_tokens=16,
                                                             stream=True)  # fmt: skip
        assert [c for c in stream]
    [row] = wait_until(lambda: [w for w in workers(mlx_cluster.url) if w.decode_tokens_per_s > 0], 10,
                       "a measured decode rate")  # fmt: skip
    assert row.decode_tokens_per_s > 0 and row.prefill_tokens_per_s > 0
    print(f"\nmlx worker: prefill {row.prefill_tokens_per_s:.0f} tok/s, decode {row.decode_tokens_per_s:.1f} tok/s")


def test_stop_sequences_end_the_answer(mlx_cluster: Cluster) -> None:
    whole = client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, temperature=0,
                                                        max_tokens=30).choices[0].message.content or ""  # fmt: skip
    assert "Paris" in whole
    stopped = client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, temperature=0,
                                                          max_tokens=30, stop=["Paris"])  # fmt: skip
    assert stopped.choices[0].message.content == whole[: whole.index("Paris")]
    assert stopped.choices[0].finish_reason == "stop"


def test_logprobs_come_back(mlx_cluster: Cluster) -> None:
    answer = client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, temperature=0,
                                                         max_tokens=4, logprobs=True, top_logprobs=2)  # fmt: skip
    content = answer.choices[0].logprobs.content if answer.choices[0].logprobs else None
    assert content and all(token.logprob <= 0 for token in content)


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"{not json", 400, "JSON"),
    (json.dumps({"model": BUNDLED_NAME}).encode(), 400, "messages"),
    (json.dumps({"model": "gpt-17", "messages": QUESTION}).encode(), 404, "gpt-17"),
    (json.dumps({"model": BUNDLED_NAME, "messages": QUESTION, "max_tokens": -1}).encode(), 400, "max_tokens"),
    (json.dumps({"model": BUNDLED_NAME, "messages": QUESTION, "max_tokens": 10**9}).encode(), 400, "8192"),
], ids=["malformed", "missing-messages", "unknown-model", "negative-max-tokens", "huge-max-tokens"])  # fmt: skip
def test_bad_input_then_still_serving(mlx_cluster: Cluster, body: bytes, status: int, needle: str) -> None:
    response = httpx.post(mlx_cluster.url + "/v1/chat/completions", content=body, timeout=60)
    assert response.status_code == status and needle in response.json()["error"]["message"]
    ok = client(mlx_cluster).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, max_tokens=2)
    assert ok.choices[0].finish_reason in ("length", "stop")
