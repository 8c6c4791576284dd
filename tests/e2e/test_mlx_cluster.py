"""What only the mlx engine (mlx-lm's server: MLX on this machine's CPU or a Mac's GPU) has: load figures the
agent measures from the traffic it relays, as mlx-lm publishes no /metrics. The client battery every engine
passes is test_client_battery.py; the macOS CI workflow runs both on Apple Silicon."""

from __future__ import annotations

import pytest

from tests.conftest import Cluster, wait_until, workers
from tests.e2e.conftest import client_of
from worker.models import BUNDLED_NAME

pytestmark = [pytest.mark.slow, pytest.mark.mlx]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_mlx_workers_report_speeds_measured_from_their_traffic(mlx_cluster: Cluster) -> None:
    for _ in range(3):  # mlx-lm has no /metrics: the agent counts what it relays
        stream = client_of(mlx_cluster.url).chat.completions.create(model=BUNDLED_NAME, messages=QUESTION,
                                                                    max_tokens=16, stream=True)  # fmt: skip
        assert [c for c in stream]
    [row] = wait_until(lambda: [w for w in workers(mlx_cluster.url) if w.decode_tokens_per_s > 0], 10,
                       "a measured decode rate")  # fmt: skip
    assert row.decode_tokens_per_s > 0 and row.prefill_tokens_per_s > 0
    print(f"\nmlx worker: prefill {row.prefill_tokens_per_s:.0f} tok/s, decode {row.decode_tokens_per_s:.1f} tok/s")
