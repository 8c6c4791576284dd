"""`cluster up` with on-demand models on real SSH hosts (network namespaces): h1 runs a pinned sim model and
offers on-demand sim models beside it; h2 has no pinned model (a vacant agent) and offers the same; h3 offers
the bundled model on the real vLLM engine, on demand. Memory is the hosts file's: each sim host holds one
on-demand model at a time, so a third evicts the least recently used. Children run over the lab's mutual TLS."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import free_port, run_cli, wait_until
from tests.lab import netns
from worker.shared.models import BUNDLED_NAME

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
if reason := netns.available():
    pytestmark.append(pytest.mark.skip(reason=reason))

SUBNET = "10.213.12"  # its own: other labs may run beside it
ON_DEMAND = "\n".join(
    f'[[models]]\nname = "{name}"\nsource = "{name}"\nload = "on-demand"\nsize_gb = 5.4\nhosts = ["h1", "h2"]\n'
    for name in ("coder", "chat", "third")
)
MODELS = f"""
[placement]
memory_fraction = 1.0

[[models]]
name = "sim-pinned"
source = "sim-pinned"
hosts = ["h1"]
size_gb = 2

{ON_DEMAND}
[[models]]
name = "{BUNDLED_NAME}"
source = "{BUNDLED_NAME}"
load = "on-demand"
hosts = ["h3"]
max_model_len = 2048
keep_alive = "10m"
"""


@dataclass
class Lab:
    home: Path
    url: str

    def ask(self, model: str) -> httpx.Response:
        body = {"model": model, "prompt": "hello", "max_tokens": 4}
        return httpx.post(self.url + "/v1/completions", json=body, timeout=600)

    def on_demand(self) -> dict[str, tuple[str, str]]:
        status = run_cli(["status", "--json"], self.home, timeout_s=60)
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout)["on_demand"]
        return {row["model"]: (row["host"], row["state"]) for row in rows}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("on-demand-lab")
    with netns.lab(root / "net", 3, subnet=SUBNET) as net:
        home, port = root / "home", free_port()
        text = net.hosts_toml(sys.executable, ["sim", "sim", "vllm"], MODELS, port)
        text = text.replace('engine = "sim"\n', 'engine = "sim"\nmemory_gb = 10\n')
        hosts_file = root / "lab.toml"
        hosts_file.write_text(text)
        try:
            up = run_cli(["up", str(hosts_file)], home, timeout_s=900)
            assert up.returncode == 0, up.stdout + up.stderr
            yield Lab(home, f"http://127.0.0.1:{port}")
        finally:
            down = run_cli(["down"], home, timeout_s=300)
            leftovers = {h.index: netns.leftovers(h) for h in net.hosts}
        assert down.returncode == 0, down.stderr
        assert leftovers == {1: [], 2: [], 3: []}  # every child agent and engine gone with its host agent


def test_every_offered_model_is_listed_with_its_state(lab: Lab) -> None:
    listed = {m["id"]: m["state"] for m in httpx.get(lab.url + "/v1/models", timeout=10).json()["data"]}
    assert listed == {
        "sim-pinned": "loaded",
        "coder": "unloaded",
        "chat": "unloaded",
        "third": "unloaded",
        BUNDLED_NAME: "unloaded",
    }
    assert set(lab.on_demand().values()) == {("", "unloaded")}


def test_cold_models_load_where_there_is_room_and_evict_the_least_recently_used(lab: Lab) -> None:
    assert lab.ask("coder").status_code == 200
    assert lab.ask("chat").status_code == 200
    held = lab.on_demand()
    assert {held["coder"], held["chat"]} == {("h1", "loaded"), ("h2", "loaded")}  # one 5.9 GB engine per host
    assert lab.ask("chat").status_code == 200  # chat used last: coder is the one to go
    assert lab.ask("third").status_code == 200
    after = lab.on_demand()
    assert after["third"] == (held["coder"][0], "loaded") and after["coder"] == ("", "unloaded")
    assert after["chat"] == held["chat"]
    assert lab.ask("sim-pinned").status_code == 200  # the pinned model was never touched


def test_the_bundled_model_loads_on_demand_on_vllm_and_answers(lab: Lab) -> None:
    client = openai.OpenAI(base_url=lab.url + "/v1", api_key="unused", max_retries=0, timeout=900)
    answer = client.chat.completions.create(
        model=BUNDLED_NAME,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=30,
    )
    assert "Paris" in (answer.choices[0].message.content or "")
    assert lab.on_demand()[BUNDLED_NAME] == ("h3", "loaded")
    wait_until(
        lambda: "orchard_cold_start_wait_seconds_count" in httpx.get(lab.url + "/metrics", timeout=10).text,
        10,
        "cold starts in /metrics",
    )
