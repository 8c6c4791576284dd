"""What a worker did lately, as operators watch it: its time to first token over the last minute and the rate
it generates tokens at. Pure and bounded; the registry and the request path feed them."""

from __future__ import annotations

import statistics
from collections import deque

from proto import orchard_pb2 as pb

WINDOW_S = 60.0
MAX_OBSERVATIONS = 512  # per worker: a p50 over the last minute needs no more


class Window:
    """Timestamped observations, the newest MAX_OBSERVATIONS; read over the last `WINDOW_S`."""

    def __init__(self, size: int = MAX_OBSERVATIONS) -> None:
        self._seen: deque[tuple[float, float]] = deque(maxlen=size)

    def add(self, at: float, value: float) -> None:
        self._seen.append((at, value))

    def median(self, now: float, window_s: float = WINDOW_S) -> float | None:
        values = [value for at, value in self._seen if now - at <= window_s]
        return statistics.median(values) if values else None


def token_rate(before: pb.LoadSample | None, after: pb.LoadSample) -> float | None:
    """Tokens generated per second between two samples of one engine; None when they cannot say (the first
    sample, a restarted engine whose counters began again, samples at the same instant)."""
    if before is None or _engine_run(after) != _engine_run(before):
        return None
    seconds, tokens = after.timestamp - before.timestamp, after.load.generation_tokens - before.load.generation_tokens
    if seconds <= 0 or tokens < 0:
        return None
    return tokens / seconds


def _engine_run(sample: pb.LoadSample) -> tuple[int, str]:
    return sample.engine_restarts, sample.agent_instance
