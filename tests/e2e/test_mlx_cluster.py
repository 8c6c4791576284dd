"""What only the mlx engine (mlx-lm's server: MLX on this machine's CPU or a Mac's GPU) has: load figures the
agent measures from the traffic it relays, as mlx-lm publishes no /metrics; tool calls where mlx-lm parses them.
The client battery every engine passes is test_client_battery.py; the macOS CI workflow runs both on Apple
Silicon."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import Cluster, agent_config, start_cluster, stop_cluster, wait_until, workers
from tests.e2e.conftest import client_of, tool_model
from tests.e2e.weather import CHAT_TOOLS, PARIS, WEATHER, chat_turns
from worker.shared.models import BUNDLED_NAME

pytestmark = [pytest.mark.slow, pytest.mark.mlx]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_mlx_workers_report_speeds_measured_from_their_traffic(mlx_cluster: Cluster) -> None:
    for _ in range(3):  # mlx-lm has no /metrics: the agent counts what it relays
        stream = client_of(mlx_cluster.url).chat.completions.create(
            model=BUNDLED_NAME, messages=QUESTION, max_tokens=16, stream=True
        )
        assert [c for c in stream]
    [row] = wait_until(
        lambda: [w for w in workers(mlx_cluster.url) if w.load.decode_tokens_per_s > 0], 10, "a measured decode rate"
    )
    rates = row.load
    assert rates.decode_tokens_per_s > 0 and rates.prefill_tokens_per_s > 0
    print(f"\nmlx worker: prefill {rates.prefill_tokens_per_s:.0f} tok/s, decode {rates.decode_tokens_per_s:.1f} tok/s")


@pytest.fixture(scope="module")
def mlx_tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """An mlx worker serving the bundled model with a chat template mlx-lm's server parses tool calls of."""
    pytest.importorskip("mlx_lm", reason="the mlx engine needs the `mlx` extra (mlx, mlx-lm)")
    tmp = tmp_path_factory.mktemp("mlx-tools")
    model = str(tool_model(tmp / "smollm2-tools"))
    cluster = start_cluster(tmp, [agent_config("mlx", model, tmp / "logs", served="smollm2-tools")])
    yield cluster
    stop_cluster(cluster)


def test_mlx_declares_tools_where_mlx_lm_parses_them_and_refuses_them_where_not(
    mlx_cluster: Cluster, mlx_tools: Cluster
) -> None:
    """mlx-lm's server drops a tool list it cannot parse calls for, with a warning in its log: the router
    refuses such a request instead, naming the model; where it can, the call comes back structured."""
    plain = httpx.get(mlx_cluster.url + "/v1/models").json()["data"]
    assert [m["capabilities"] for m in plain] == [[]]
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(mlx_cluster.url).chat.completions.create(
            model=BUNDLED_NAME, messages=chat_turns(), tools=CHAT_TOOLS, max_tokens=8
        )
    assert refused.value.code == "tools_unsupported"
    listed = httpx.get(mlx_tools.url + "/v1/models").json()["data"]
    assert [m["capabilities"] for m in listed] == [["tools"]]
    chat = client_of(mlx_tools.url).chat.completions.create(
        model="smollm2-tools", messages=chat_turns(), tools=CHAT_TOOLS, max_tokens=40, temperature=0
    )
    [call] = chat.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == (WEATHER, PARIS)
