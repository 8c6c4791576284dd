"""One measurement shared by every caller that can use it: each router (and each shard-group peer) watching an
agent asks for its load once a second; scraping the engine's /metrics once per asker costs the engine's own API
process (vLLM serves /metrics in the process that streams tokens) and makes the agent's rates jump between
samples taken milliseconds apart. A result no older than the caller accepts is reused; callers at the same
moment share one run (single flight); and a run that is slow (a busy engine answering /metrics late) holds a
caller back only as long as it allows, after which it gets the last result: a late scrape never makes the agent's
own sample late (the router takes a silent agent for a lost one)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, produce: Callable[[], Awaitable[T]], clock: Callable[[], float] = time.monotonic) -> None:
        self._produce, self._clock = produce, clock
        self._value: tuple[float, T] | None = None  # (when its run started, the result)
        self._running: asyncio.Task[T] | None = None

    async def get(self, max_age_s: float, wait_s: float | None = None) -> T:
        """The last result if its run started at most `max_age_s` ago; else the running (or a new) run's, waited
        for at most `wait_s` (None: as long as it takes) when an older result can stand in. The first result is
        always waited for. A caller cancelled while it waits leaves the run to the others."""
        if self._value is not None and self._clock() - self._value[0] <= max_age_s:
            return self._value[1]
        running = self._running
        if running is None:
            running = self._running = asyncio.create_task(self._run())
            running.add_done_callback(_log_failure)
        if self._value is None or wait_s is None:
            return await asyncio.shield(running)
        done, _ = await asyncio.wait({running}, timeout=wait_s)
        return running.result() if done else self._value[1]

    async def _run(self) -> T:
        started = self._clock()
        try:
            value = await self._produce()
        finally:
            self._running = None  # a failed run is not kept: the next caller tries again
        self._value = (started, value)
        return value


def _log_failure(task: asyncio.Task[T]) -> None:
    """Say when a run failed: its callers may have stopped waiting for it (and got the last result)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("a shared measurement failed: %r", exc)
