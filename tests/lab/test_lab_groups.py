"""Shard groups on the network-namespace lab: the bundled model on the mlx engine (mlx[cpu]) as a 3-host tensor
group and as a 2-host pipeline group, ring over TCP between namespace hosts, compared token for token with the
same model on one host (fp32 weights); and a killed member takes its group down, which relaunches and serves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.conftest import agent_config, free_port, run_cli, start_cluster, stop_cluster, wait_until, workers
from tests.lab import netns
from worker.shared.models import BUNDLED_NAME

pytestmark = netns.marks("mlx_lm", "mlx")

PROMPTS = [
    "What is the capital of France?",
    "Name three colours of apples.",
    "Write one sentence about orchards in spring.",
]
MAX_TOKENS = 12


def greedy(url: str) -> list[str]:
    client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=300)
    answers = []
    for prompt in PROMPTS:
        reply = client.chat.completions.create(
            model=BUNDLED_NAME, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0
        )
        answers.append(reply.choices[0].message.content or "")
    return answers


def tokens_per_second(url: str, tokens: int = 24) -> float:
    client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=300)
    started = time.perf_counter()
    reply = client.completions.create(model=BUNDLED_NAME, prompt="Once upon a time", max_tokens=tokens, temperature=0)
    assert reply.usage is not None
    return reply.usage.completion_tokens / (time.perf_counter() - started)


@pytest.fixture(scope="module")
def single_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], float]]:
    """The reference: the same model on the mlx engine on one host, through the same router and agent."""
    tmp = tmp_path_factory.mktemp("mlx-single")
    cluster = start_cluster(tmp, [agent_config("mlx", BUNDLED_NAME, tmp / "logs")])
    try:
        yield greedy(cluster.url), tokens_per_second(cluster.url)
    finally:
        stop_cluster(cluster)


@dataclass
class GroupLab:
    net: netns.Lab
    url: str
    up_output: str


@contextlib.contextmanager
def group_lab(tmp: Path, hosts: int, mode: str) -> Iterator[GroupLab]:
    with netns.lab(tmp / "net", hosts) as net:
        port = free_port()
        listed = ", ".join(f'"h{h.index}"' for h in net.hosts)
        models = (
            f'[[models]]\nname = "{BUNDLED_NAME}"\nsource = "{BUNDLED_NAME}"\nhosts = [{listed}]\nmode = "{mode}"\n'
        )
        hosts_file = tmp / "lab.toml"
        hosts_file.write_text(net.hosts_toml(sys.executable, ["mlx"] * hosts, models, port))
        home = tmp / "home"
        try:
            result = run_cli(["up", str(hosts_file)], home, timeout_s=900)
            assert result.returncode == 0, result.stdout + result.stderr
            yield GroupLab(net, f"http://127.0.0.1:{port}", result.stdout)
        finally:
            run_cli(["down"], home, timeout_s=300)
        for host in net.hosts:  # every agent and rank process is gone; only each host's sshd is left
            assert netns.pids_in(host.namespace) == [host.sshd_pid]


def rank_process(host: netns.TestHost) -> int:
    for pid in netns.pids_in(host.namespace):
        with contextlib.suppress(FileNotFoundError):
            if b"worker.engines.programs.mlx_server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise AssertionError(f"no mlx rank process on {host.namespace}")


def test_three_host_tensor_group_answers_like_one_host_and_relaunches_after_a_member_dies(
    tmp_path: Path, single_host: tuple[list[str], float]
) -> None:
    reference, single_rate = single_host
    with group_lab(tmp_path, 3, "tensor") as lab:
        assert "rank 0" in lab.up_output and "rank 2" in lab.up_output
        [row] = workers(lab.url)  # the router sees one replica: rank 0's agent
        assert row.worker_id == "h1" and row.ready
        assert greedy(lab.url) == reference
        group_rate = tokens_per_second(lab.url)
        print(f"\nmlx tokens/s: one host {single_rate:.1f}, 3-host tensor group {group_rate:.1f}")

        os.kill(rank_process(lab.net.hosts[1]), signal.SIGKILL)  # rank 1's process, on h2
        killed = time.monotonic()
        wait_until(lambda: not workers(lab.url)[0].ready, 15, "the group to be reported down")
        down_after = time.monotonic() - killed
        wait_until(lambda: workers(lab.url)[0].ready, 600, "the group to relaunch", interval_s=1)
        print(f"group reported down {down_after:.1f}s after the kill; serving again {time.monotonic() - killed:.0f}s")
        assert greedy(lab.url) == reference


def test_two_host_pipeline_group_answers_like_one_host(tmp_path: Path, single_host: tuple[list[str], float]) -> None:
    reference, single_rate = single_host
    with group_lab(tmp_path, 2, "pipeline") as lab:
        assert greedy(lab.url) == reference
        print(f"\nmlx tokens/s: one host {single_rate:.1f}, 2-host pipeline group {tokens_per_second(lab.url):.1f}")
        streams_and_a_disconnect(lab.url, reference)


def streams_and_a_disconnect(url: str, reference: list[str]) -> None:
    """The core of the client battery through a group: a stream adds up to the greedy answer, 16 streams at
    once all answer, and a client that leaves does not keep the group busy (the next answer comes as usual)."""
    client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=300, max_retries=0)
    ask = {
        "model": BUNDLED_NAME,
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask, stream=True) if c.choices]
    assert "".join(pieces) == reference[0]

    def one(_: int) -> str:
        stream = client.chat.completions.create(**ask, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(16))) == [reference[0]] * 16
    body = {"model": BUNDLED_NAME, "prompt": "Once upon a time", "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        assert len([line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data: ")]) >= 3
    started = time.monotonic()
    assert greedy(url)[:1] == reference[:1]
    assert time.monotonic() - started < 60  # not behind the 2,000 tokens of the stream that was left
