"""The routing benchmark runs end to end on a tiny fleet (so it cannot rot); its figures are not asserted."""

from __future__ import annotations

from pathlib import Path

from cluster.bench_routing import RoutingBenchConfig, build, run_policy


def test_one_policy_round_on_two_sim_workers(tmp_path: Path) -> None:
    config = RoutingBenchConfig(workers=2, requests=8, rate=20.0, sim_options=("decode-ms-per-token=1",))
    requests = build("shared_prefix", config.requests, config.seed)
    result = run_policy("prefix", "shared_prefix", requests, config, tmp_path)
    assert result.errors == 0 and result.requests == 8
    assert result.output_tok_s > 0 and result.ttft_p50_ms > 0
    assert 0.0 < result.prefix_hit_rate <= 1.0  # 8 requests over 2 shared system prompts: some hits
