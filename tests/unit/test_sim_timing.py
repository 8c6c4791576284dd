"""The sim engine's timing model and its deterministic text."""

from __future__ import annotations

from worker.engines.programs.sim.timing import generate_words, render_chat, tokenize
from worker.shared.simtiming import SimTiming


def test_prefill_cost_grows_with_uncached_tokens() -> None:
    timing = SimTiming(overhead_ms=2, prefill_ms_per_token=0.5)
    assert timing.prefill_seconds(0) == 0.002
    assert timing.prefill_seconds(100) == 0.052


def test_decode_slows_with_batch_size() -> None:
    timing = SimTiming(decode_ms_per_token=10, batch_slowdown=0.1)
    assert timing.decode_seconds(1) == 0.010
    assert abs(timing.decode_seconds(11) - 0.020) < 1e-12


def test_greedy_text_is_deterministic_per_prompt_and_seed() -> None:
    assert generate_words("p", 8, seed=1, temperature=0) == generate_words("p", 8, seed=1, temperature=0)
    assert generate_words("p", 8, seed=1, temperature=0) != generate_words("p", 8, seed=2, temperature=0)
    assert len(generate_words("q", 5, seed=0, temperature=0)) == 5


def test_chat_rendering_keeps_text_parts() -> None:
    text = render_chat([{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    assert text == "user: hello\nassistant:"
    assert tokenize(text) == ["user:", "hello", "assistant:"]


def test_prefix_cache_counts_cached_prefix_tokens_and_is_bounded() -> None:
    from worker.engines.programs.sim.prefix_cache import PrefixCache

    cache = PrefixCache(capacity_blocks=4, block_tokens=2)
    assert cache.lookup_and_insert(["a", "b", "c", "d", "e"]) == 0  # 2 complete blocks stored
    assert cache.lookup_and_insert(["a", "b", "c", "d", "x", "y"]) == 4
    assert cache.lookup_and_insert(["z", "b"]) == 0  # different first block: nothing shared
    cache.lookup_and_insert(["p", "q", "r", "s", "t", "u"])  # 3 more blocks: oldest evicted
    assert len(cache) == 4
    assert cache.lookup_and_insert(["a", "b"]) == 0
