"""The latency and calibration benchmarks run end to end on the sim engine (so they cannot rot); figures are
checked for shape and sign only — they are measurements, not results to assert."""

from __future__ import annotations

import asyncio

from cluster.bench import latency
from cluster.bench.calibrate import calibrate, report
from tests.conftest import Cluster, free_port

FAST = (("decode-ms-per-token", "2"), ("overhead-ms", "1"), ("prefill-ms-per-token", "0.02"))


def test_latency_bench_measures_every_hop() -> None:
    rounds = asyncio.run(latency.measure(streams=2, max_tokens=4, rounds=1, sim_options=FAST, port=free_port()))
    assert [r.target for r in rounds] == ["engine", "agent", "router"]
    for r in rounds:
        assert r.errors == 0 and len(r.chunk_ms) >= 2 * 4 and all(ms > 0 for ms in r.chunk_ms)
    text = latency.report(rounds)
    assert "added per chunk by router (router - agent)" in text and "added per chunk by agent" in text


def test_calibration_against_a_running_endpoint(sim_cluster: Cluster) -> None:
    result = asyncio.run(calibrate(sim_cluster.url, sim_cluster.model, lengths=(8, 64), repeats=1, batch=2))
    assert result.overhead_ms > 0 and result.decode_ms_per_token > 0 and len(result.points) == 2
    assert result.points[0][0] < result.points[1][0]  # the engine's own token counts, from usage
    assert "--sim-option prefill-ms-per-token=" in report(result)
