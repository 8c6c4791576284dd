"""The sim engine's timing model and its deterministic text."""

from __future__ import annotations

import asyncio
import time

from worker.engines.programs.sim import server
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


def _token_times(lockstep: bool) -> tuple[list[float], list[float]]:
    """Two sequences of 6 tokens on one sim, the second starting 7 ms after the first: when each token came."""
    timing = SimTiming(overhead_ms=0, prefill_ms_per_token=0, decode_ms_per_token=20)
    state = server.SimState(model="m", timing=timing, seed=0, lockstep=lockstep)

    async def sequence(delay_s: float, prompt: str) -> list[float]:
        await asyncio.sleep(delay_s)
        job = server._Job("r", "chat", prompt, 6, 0.0, True, False, False)
        return [time.monotonic() async for _ in server._run(state, job)]

    async def main() -> tuple[list[float], list[float]]:
        first, second = await asyncio.gather(sequence(0.0, "a b c"), sequence(0.007, "d e f"))
        return first, second

    return asyncio.run(main())


def test_lockstep_decodes_every_running_sequence_in_the_same_step() -> None:
    first, second = _token_times(lockstep=True)
    assert max(abs(a - b) for a, b in zip(first[1:], second[1:], strict=True)) < 0.003  # one step, both tokens
    alone_first, alone_second = _token_times(lockstep=False)
    assert min(b - a for a, b in zip(alone_first[1:], alone_second[1:], strict=True)) > 0.004  # each its own pace
