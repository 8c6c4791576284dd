"""One measurement shared by every caller that can use it: each router (and each shard-group peer) watching an
agent asks for its load once a second; scraping the engine's /metrics once per asker costs the engine's own API
process (vLLM serves /metrics in the process that streams tokens) and makes the agent's rates jump between
samples taken milliseconds apart. A result no older than the caller accepts is reused; callers at the same
moment share one run (single flight)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, produce: Callable[[], Awaitable[T]], clock: Callable[[], float] = time.monotonic) -> None:
        self._produce, self._clock = produce, clock
        self._value: tuple[float, T] | None = None  # (when its run started, the result)
        self._running: asyncio.Future[T] | None = None

    async def get(self, max_age_s: float) -> T:
        """The last result if its run started at most `max_age_s` ago, else the running one's, else a new run's.
        A caller cancelled while it waits leaves the run to the others (it is never cancelled half-way)."""
        if self._value is not None and self._clock() - self._value[0] <= max_age_s:
            return self._value[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._running)

    async def _run(self) -> T:
        started = self._clock()
        try:
            value = await self._produce()
        finally:
            self._running = None  # a failed run is not kept: the next caller tries again
        self._value = (started, value)
        return value
