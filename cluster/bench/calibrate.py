"""Measure an OpenAI-compatible engine's costs and express them as `sim` engine options.

    python -m cluster.bench calibrate --url http://127.0.0.1:8000 --model NAME

Four measurements, each on fresh prompts (a unique first word defeats the prefix cache):
- overhead: time to first token of a one-word prompt;
- prefill: slope of time to first token over prompt length (least squares over several lengths);
- decode: mean gap between tokens of one stream alone;
- batch slowdown: how much that gap grows per extra concurrent stream.
Token counts come from the engine's own `usage`, so the figures are per real token.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
import uuid
from dataclasses import dataclass

import httpx

from cluster.bench.client import sse_chunks
from worker.shared.simtiming import SimTiming

_FILLER = "apple pear plum cherry quince blossom branch root soil rain frost prune graft harvest ladder basket"


@dataclass(frozen=True)
class StreamTiming:
    ttft_s: float
    gaps_s: tuple[float, ...]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Calibration:
    overhead_ms: float
    prefill_ms_per_token: float
    decode_ms_per_token: float
    batch_slowdown: float
    points: tuple[tuple[int, float], ...]  # (prompt tokens, TTFT ms) behind the prefill slope

    def sim_options(self) -> list[str]:
        return [
            f"overhead-ms={self.overhead_ms:.1f}",
            f"prefill-ms-per-token={self.prefill_ms_per_token:.3f}",
            f"decode-ms-per-token={self.decode_ms_per_token:.2f}",
            f"batch-slowdown={self.batch_slowdown:.3f}",
        ]


def _prompt(words: int) -> str:
    filler = (_FILLER.split() * (words // 16 + 1))[: max(words - 1, 0)]
    return " ".join([uuid.uuid4().hex[:8], *filler])


async def timed_stream(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> StreamTiming:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    stamps: list[float] = []
    usage: dict[str, int] = {}
    async for arrival in sse_chunks(client, url, "/v1/completions", body):
        usage = arrival.chunk.get("usage") or usage
        if arrival.has_text:
            stamps.append(arrival.at)
    if not stamps or not usage:
        raise RuntimeError(f"{url} streamed no tokens or no usage")
    return StreamTiming(
        ttft_s=stamps[0] - started,
        gaps_s=tuple(b - a for a, b in itertools.pairwise(stamps)),
        prompt_tokens=int(usage["prompt_tokens"]),
        completion_tokens=int(usage["completion_tokens"]),
    )


def _slope(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares line through (x, y): (intercept, slope)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    slope = statistics.covariance(xs, ys) / statistics.variance(xs)
    return statistics.mean(ys) - slope * statistics.mean(xs), slope


async def calibrate(
    url: str, model: str, lengths: tuple[int, ...] = (64, 256, 512, 1024), repeats: int = 3, batch: int = 4
) -> Calibration:
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        await timed_stream(client, url, model, _prompt(8), 4)  # warm-up
        overhead = statistics.median(
            [(await timed_stream(client, url, model, _prompt(1), 1)).ttft_s for _ in range(repeats)]
        )
        points: list[tuple[int, float]] = []
        for words in lengths:
            for _ in range(repeats):
                timing = await timed_stream(client, url, model, _prompt(words), 1)
                points.append((timing.prompt_tokens, timing.ttft_s * 1000))
        _, prefill_ms = _slope(points)
        alone = await timed_stream(client, url, model, _prompt(16), 64)
        decode_ms = statistics.median(alone.gaps_s) * 1000
        together = await asyncio.gather(*(timed_stream(client, url, model, _prompt(16), 64) for _ in range(batch)))
        batched_ms = statistics.median([g for t in together for g in t.gaps_s]) * 1000
    slowdown = max(batched_ms / decode_ms - 1.0, 0.0) / (batch - 1)
    return Calibration(
        overhead_ms=overhead * 1000,
        prefill_ms_per_token=max(prefill_ms, 0.0),
        decode_ms_per_token=decode_ms,
        batch_slowdown=slowdown,
        points=tuple(points),
    )


def report(result: Calibration) -> str:
    defaults = SimTiming()
    lines = ["prompt tokens -> TTFT ms: " + ", ".join(f"{n}->{ms:.0f}" for n, ms in result.points)]
    rows = (
        ("overhead_ms", result.overhead_ms, defaults.overhead_ms),
        ("prefill_ms_per_token", result.prefill_ms_per_token, defaults.prefill_ms_per_token),
        ("decode_ms_per_token", result.decode_ms_per_token, defaults.decode_ms_per_token),
        ("batch_slowdown", result.batch_slowdown, defaults.batch_slowdown),
    )
    lines.append(f"{'option':<24}{'measured':>12}{'sim default':>14}")
    lines += [f"{name:<24}{measured:>12.3f}{default:>14.3f}" for name, measured, default in rows]
    lines.append("sim options: " + " ".join(f"--sim-option {o}" for o in result.sim_options()))
    return "\n".join(lines)
