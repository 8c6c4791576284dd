"""Silence is news: while a call waits on its engine (a long prompt's prefill, a whole answer being computed),
the agent says it is alive as often as the router asked (GenerateRequest.heartbeat_seconds), so the router can
take a longer silence for a hung or cut-off host (its gap deadline) instead of waiting out the request's
deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

T = TypeVar("T")


async def with_heartbeats(source: AsyncIterator[T], every_s: float | None) -> AsyncGenerator[T | None, None]:
    """`source`'s items, and None whenever `every_s` passes without one (never, for None). Closing this closes
    nothing of `source` (its owner does); a pending read is cancelled."""
    while True:
        step = asyncio.ensure_future(anext(source))
        try:
            while not (await asyncio.wait({step}, timeout=every_s))[0]:
                yield None
        finally:
            while not step.done():  # closed or cancelled meanwhile: end the read, and let it end before the
                step.cancel()  # owner closes `source` (an async generator cannot be closed while a read runs in it)
                with contextlib.suppress(BaseException):
                    await step
        try:
            item = step.result()
        except StopAsyncIteration:
            return
        yield item


async def once(awaitable: Awaitable[T]) -> AsyncGenerator[T, None]:
    """One awaited value as an async iterator (a whole answer, to pass through with_heartbeats)."""
    yield await awaitable
