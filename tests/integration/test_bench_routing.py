"""The routing benchmark runs end to end on a tiny fleet (so it cannot rot); its figures are not asserted."""

from __future__ import annotations

import json
from pathlib import Path

from cluster.bench.routing import RoutingBenchConfig, main

FAST = (("decode-ms-per-token", "1"), ("prefill-ms-per-token", "0.05"), ("overhead-ms", "2"))


def test_two_policies_on_one_heterogeneous_sim_fleet(tmp_path: Path) -> None:
    out = tmp_path / "routing.json"
    config = RoutingBenchConfig(
        workers=2,
        requests=8,
        rate=20.0,
        policies=("prefix", "round_robin"),
        sim_options=FAST,
        worker_sim_options=((0, ("decode-ms-per-token", "0.5")),),
        system_words=(200, 400),
        out=out,
    )
    rows = main(config)
    assert [(r.policy, r.requests, r.errors) for r in rows] == [("prefix", 8, 0), ("round_robin", 8, 0)]
    for row in rows:
        assert row.output_tok_s > 0 and row.ttft_p50_ms > 0
        assert sum(row.share.values()) > 0.99 and set(row.share) == {"w0", "w1"}
        # 8 requests over 2 shared system prompts, caches emptied between policies: some hits, never all.
        assert 0.0 < row.prefix_hit_rate < 1.0
    assert rows[1].share == {"w0": 0.5, "w1": 0.5}  # round robin alternates
    saved = json.loads(out.read_text())
    assert saved["config"]["worker_sim_options"] == [[0, ["decode-ms-per-token", "0.5"]]] and len(saved["rows"]) == 2
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_drives_any_openai_endpoint_as_it_is(tmp_path: Path, sim_cluster) -> None:
    config = RoutingBenchConfig(
        requests=4,
        rate=20.0,
        model="sim-model",
        url=sim_cluster.url,
        system_words=(50, 100),
        out=tmp_path / "endpoint.json",
    )
    [row] = main(config)
    assert (row.policy, row.requests, row.errors) == ("endpoint", 4, 0) and row.output_tok_s > 0
