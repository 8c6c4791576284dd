"""What every benchmark shares: a timed SSE reader, percentiles, and asking an agent where its engine is."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.shared import tls


@dataclass(frozen=True)
class Arrival:
    """One SSE data chunk and when it arrived (perf_counter for intervals, wall clock for the sim's stamps)."""

    at: float
    wall_ns: int
    chunk: dict[str, Any]

    @property
    def has_text(self) -> bool:
        """A chat delta, a completion or an Anthropic content delta that carries generated text."""
        if self.chunk.get("type") == "content_block_delta":
            return bool((self.chunk.get("delta") or {}).get("text"))
        return any((c.get("delta") or {}).get("content") or c.get("text") for c in self.chunk.get("choices") or ())


async def sse_chunks(
    client: httpx.AsyncClient, url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> AsyncIterator[Arrival]:
    """POST a streaming request and yield every JSON chunk as it arrives; raises on a non-200 answer."""
    async with client.stream("POST", url + path, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {(await response.aread()).decode()[:300]}")
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                at, wall = time.perf_counter(), time.time_ns()
                yield Arrival(at, wall, json.loads(line[6:]))


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank below); NaN for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def engine_url(agent_address: str, tls_dir: Path | None = None) -> str:
    """The engine URL an agent reports in Info (benchmarks compare it with the path through Orchard); `tls_dir`:
    the identity to call it with (the local cluster's router's)."""
    with tls.blocking_channel(agent_address, tls_dir) as channel:
        info: pb.InfoReply = pb_grpc.WorkerStub(channel).Info(pb.InfoRequest(), timeout=10)
    return info.engine_url
