"""The e2e clusters, one per engine, shared by the client battery
(test_client_battery.py) and the engine-specific modules.

`cluster up` (the README's first command: vLLM, the bundled model) and an mlx cluster are each started
once for this package (and stopped after its last test). A test marked `takes_down` stops a shared
cluster, so it is moved after every other test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from cluster.bringup import local
from tests.conftest import Cluster, agent_config, agent_info, free_port, run_cli, start_cluster, stop_cluster
from worker.shared.models import BUNDLED_NAME, prepare_bundled

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move this package's `takes_down` tests after its others (a stable sort: the order is otherwise kept)."""
    here = [i for i, item in enumerate(items) if HERE in item.path.parents]
    ours = sorted((items[i] for i in here), key=lambda item: item.get_closest_marker("takes_down") is not None)
    for i, item in zip(here, ours, strict=True):
        items[i] = item


SENTENCE_ENDS = (30, 1116)  # SmolLM2's tokens for "." and "\n\n"


def tool_model(folder: Path, *, context: int | None = None, one_sentence: bool = False) -> Path:
    """The bundled SmolLM2 with a chat template that renders tools as Qwen2.5 and Hermes do (chatml_tools.jinja):
    Orchard then chooses vLLM's hermes parser by itself, and tool calls run through every API on a model the suite
    carries. `context` raises its position limit (RoPE runs past the 8k it was trained on; the text gets worse,
    the protocol does not); `one_sentence` ends every answer at its first full stop or blank line, greedily, so
    that a coding agent's turn ends (a 135M model under a coding agent's long system prompt rambles on)."""
    bundled = prepare_bundled()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).symlink_to(bundled / name)
    (folder / "chat_template.jinja").write_text((HERE / "chatml_tools.jinja").read_text())
    config = json.loads((bundled / "config.json").read_text())
    config["max_position_embeddings"] = max(context or 0, config["max_position_embeddings"])
    (folder / "config.json").write_text(json.dumps(config))
    generation = json.loads((bundled / "generation_config.json").read_text())
    if one_sentence:  # vLLM stops at any of the generation config's end tokens and samples with its temperature
        generation |= {"eos_token_id": [generation["eos_token_id"], *SENTENCE_ENDS], "temperature": 0.0}
    (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder


def client_of(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


@dataclass
class UpCluster:
    """What `cluster up --detach` started: its home (state, logs, gateway.db) and what it printed."""

    home: Path
    state: local.LocalState
    up_output: str

    @property
    def url(self) -> str:
        return self.state.url

    @property
    def client(self) -> openai.OpenAI:
        return client_of(self.url)

    @property
    def engine_url(self) -> str:
        return agent_info(self.state.agent_address, local.router_tls(self.home)).engine_url


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`cluster up --task embed`: the bundled model on vLLM's pooling runner."""
    home: Path = tmp_path_factory.mktemp("embed-home")
    try:
        result = run_cli(["up", "--task", "embed", "--detach", "--port", str(free_port())], home)
        assert result.returncode == 0, result.stdout + result.stderr
        state = local.read_state(home)
        assert state is not None
        yield state.url
    finally:
        run_cli(["down"], home, timeout_s=120)


@pytest.fixture(scope="package")
def mlx_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    pytest.importorskip("mlx_lm", reason="the mlx engine needs the `mlx` extra (mlx, mlx-lm)")
    tmp = tmp_path_factory.mktemp("mlx")
    cluster = start_cluster(tmp, [agent_config("mlx", BUNDLED_NAME, tmp / "logs")])
    yield cluster
    stop_cluster(cluster)
