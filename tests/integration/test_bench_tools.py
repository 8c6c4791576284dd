"""The latency and calibration benchmarks run end to end on the sim engine (so they cannot rot); figures are
checked for shape and sign only — they are measurements, not results to assert."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from cluster.bench import capacity, fairness, gateway, latency, metrics_cost
from cluster.bench.calibrate import calibrate, report
from cluster.router import requestlog
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


def test_fairness_bench_runs_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    config = fairness.FairnessConfig(workers=1, slots=2, rate_b=2.0, seconds=2.0, max_tokens=4)
    rows = fairness.run(config)
    expected = [
        ("B alone", "B"),
        ("A alone (10x)", "A"),
        ("A 10x + B", "A"),
        ("A 10x + B", "B"),
        ("weights 2:1", "A"),
        ("weights 2:1", "B"),
    ]
    assert [(r.scenario, r.team) for r in rows] == expected
    assert all(r.requests > 0 and r.tokens_per_s > 0 for r in rows)
    assert "served tokens A:B at weights 2:1" in fairness.report(rows)


def test_gateway_bench_compares_gated_and_open_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    gateway.run(concurrency=4, max_tokens=4, rounds=1, sim_options=gateway.FAST)
    out = capsys.readouterr().out
    assert "throughput ratio gated/open:" in out and "added TTFT by the gateway" in out
    assert out.count("gated ") >= 1 and out.count("open ") >= 1


def test_metrics_bench_times_the_bookkeeping_side_by_side() -> None:
    cost = metrics_cost.measure(requests=2000, workers=8)
    assert 0 < cost.before_us < cost.now_us and cost.scrape_ms > 0  # more work now, and measured
    text = metrics_cost.report(cost)
    assert "per request, bookkeeping before" in text and "a lab of 8 workers" in text
    assert requestlog.log.propagate and not requestlog.log.handlers  # the bench put the router's log back


def test_capacity_bench_counts_the_routers_cpu_per_token_beside_a_baseline_checkout() -> None:
    """This checkout stands in for the baseline: the other build's routers start from its folder."""
    rows = capacity.run([2], streams=4, max_tokens=32, decode_ms=5.0, baseline=Path(__file__).parents[2], lockstep=True)
    assert sorted(r.router for r in rows) == ["before, gateway", "before, open", "now, gateway", "now, open"]
    for row in rows:
        assert row.errors == 0 and row.tokens == 4 * 32  # every token of every stream, counted by the client
        assert len(row.first_ms) == 4 and len(row.later_ms) == 4 * 31 and min(row.later_ms) > 0
        assert row.router_loop_s <= row.router_cpu_s + 0.01  # the loop's thread is part of the process (10 ms ticks)
        assert 1 <= row.writes <= row.tokens and row.idle_cores >= 0  # every token came in some read
        assert math.isfinite(row.request_us) and math.isfinite(row.net_us_per_token)
    assert sum(r.router_cpu_s for r in rows) > 0  # CPU is counted in clock ticks: a short round may read 0
    assert "idle cores" in capacity.report(rows) and "tok/write" in capacity.report(rows)
    assert "N=2 gateway: router µs/token" in capacity.report(rows)
