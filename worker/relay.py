"""Relaying one OpenAI request to the engine's local server, chunk by chunk.

Each request gets its own HTTP stream; closing the iterator (gRPC cancel) closes that stream, which makes
the engine abort the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import httpx

DONE = b"[DONE]"


class EngineError(Exception):
    """The engine answered with an HTTP error; `body` is its (OpenAI-shaped) error JSON."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"engine answered HTTP {status}")
        self.status = status
        self.body = body


@dataclass
class Tally:
    """What the relay learned on the way: usage and finish reason for the Final message."""

    usage: dict[str, Any] = field(default_factory=dict)
    finish_reason: str = ""
    tokens_seen: bool = False

    def observe(self, payload: dict[str, Any]) -> None:
        if isinstance(payload.get("usage"), dict):
            self.usage = payload["usage"]
        for choice in payload.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            if choice.get("text") or delta.get("content") or delta.get("tool_calls") or choice.get("message"):
                self.tokens_seen = True


async def stream_chunks(client: httpx.AsyncClient, url: str, body: bytes, tally: Tally) -> AsyncGenerator[bytes, None]:
    """Yield each SSE `data:` payload from the engine, unchanged, until `[DONE]`."""
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    async with client.stream("POST", url, content=body, headers=headers) as response:
        if response.status_code != 200:
            raise EngineError(response.status_code, await response.aread())
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, event: lines
            payload = line[5:].strip().encode()
            if payload == DONE:
                return
            if _worth_parsing(payload):
                try:
                    tally.observe(json.loads(payload))
                except (ValueError, AttributeError):
                    pass  # not ours to judge: pass it on unchanged
            else:
                tally.tokens_seen = True  # a plain delta chunk: text arrived
            yield payload


def _worth_parsing(payload: bytes) -> bool:
    """Most chunks are plain deltas; only those that may carry usage or a finish reason need JSON parsing."""
    return b'"usage"' in payload or b'"finish_reason":"' in payload or b'"finish_reason": "' in payload


async def whole_response(client: httpx.AsyncClient, url: str, body: bytes, tally: Tally) -> bytes:
    response = await client.post(url, content=body, headers={"content-type": "application/json"})
    if response.status_code != 200:
        raise EngineError(response.status_code, response.content)
    try:
        tally.observe(response.json())
    except ValueError:
        pass
    return response.content


_END = object()


async def coalesced(
    source: AsyncGenerator[bytes, None], max_batch: int = 64, buffer: int = 1024
) -> AsyncGenerator[list[bytes], None]:
    """Yield the source's items in order, in lists of whatever arrived while the consumer was busy (≤ max_batch).

    A reader task fills a bounded queue (backpressure at `buffer` items); `_END` ends it and an exception is
    re-raised here. Closing this iterator (cancellation) cancels the reader, which closes the source.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=buffer)

    async def read() -> None:
        try:
            async for item in source:
                await queue.put(item)
            await queue.put(_END)
        except Exception as exc:  # handed to the consumer, who re-raises it
            await queue.put(exc)
        finally:
            await source.aclose()  # a cancelled reader must close the engine stream now, not at GC

    reader = asyncio.create_task(read())
    try:
        while True:
            batch: list[bytes] = []
            item = await queue.get()
            while True:
                if item is _END:
                    if batch:
                        yield batch
                    return
                if isinstance(item, Exception):
                    if batch:
                        yield batch
                    raise item
                batch.append(item)  # type: ignore[arg-type]
                if len(batch) >= max_batch or queue.empty():
                    break
                item = queue.get_nowait()
            yield batch
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
