"""Weighted fair queuing across teams for one model (start-time fair queuing), bounded; and the admission
controller that lets a model's requests through only while its workers have free slots.

A request of cost c from a team of weight w gets the tag start = max(virtual time, that team's last finish),
finish = start + c / w; the smallest start goes first and advances the virtual time. A team that was idle
starts at the current virtual time, so a backlog elsewhere cannot starve it, and backlogged teams share in
proportion to their weights.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The model's queue holds as many requests as it may."""


class NoCapacity(Exception):
    """No ready worker serves the model: nothing would ever free a slot, so nobody waits."""


@dataclass(order=True)
class _Entry(Generic[T]):
    start: float
    seq: int
    team: str = field(compare=False)
    item: T = field(compare=False)
    gone: bool = field(default=False, compare=False)


class FairQueue(Generic[T]):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.vtime = 0.0
        self._finish: dict[str, float] = {}  # per team: its last finish tag (pruned once the past)
        self._queued: dict[str, int] = {}
        self._heap: list[_Entry[T]] = []
        self._count = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._count

    def push(self, team: str, weight: float, cost: float, item: T) -> _Entry[T]:
        if self._count >= self.limit:
            raise QueueFull
        start = max(self.vtime, self._finish.get(team, 0.0))
        self._finish[team] = start + cost / max(weight, 1e-6)
        entry = _Entry(start, next(self._seq), team, item)
        heapq.heappush(self._heap, entry)
        self._count += 1
        self._queued[team] = self._queued.get(team, 0) + 1
        return entry

    def remove(self, entry: _Entry[T]) -> None:
        """A waiter that left (lazy: skipped when it reaches the front)."""
        if not entry.gone:
            entry.gone = True
            self._left(entry.team)

    def pop(self) -> T | None:
        while self._heap:
            entry = heapq.heappop(self._heap)
            if entry.gone:
                continue
            self.vtime = max(self.vtime, entry.start)
            self._left(entry.team)
            return entry.item
        return None

    def _left(self, team: str) -> None:
        self._count -= 1
        self._queued[team] -= 1
        if not self._queued[team]:
            del self._queued[team]
        # Bounded: an idle team whose tag the virtual time has passed needs no tag (max() gives vtime anyway).
        for idle in [t for t, finish in self._finish.items() if t not in self._queued and finish <= self.vtime]:
            del self._finish[idle]


class Admission:
    """Per model: at most `capacity(model)` requests in flight (the sum of its ready workers' slots); the rest
    wait in a bounded fair queue and are let through as slots free."""

    def __init__(self, capacity: Callable[[str], int], max_queue: int) -> None:
        self.capacity = capacity
        self.max_queue = max_queue
        self.active: dict[str, int] = {}
        self.queues: dict[str, FairQueue[asyncio.Future[None]]] = {}

    def waiting(self, model: str) -> int:
        queue = self.queues.get(model)
        return len(queue) if queue else 0

    async def acquire(self, model: str, team: str, weight: float, cost: float, timeout_s: float) -> None:
        """Return once the request holds a slot. Raises NoCapacity, QueueFull, or TimeoutError past `timeout_s`."""
        if self.capacity(model) == 0:
            raise NoCapacity
        queue = self.queues.setdefault(model, FairQueue(self.max_queue))
        if not queue and self.active.get(model, 0) < self.capacity(model):
            self.active[model] = self.active.get(model, 0) + 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = queue.push(team, weight, cost, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(model)  # granted just as we gave up: hand the slot on
            elif not waiter.done():
                waiter.cancel()
                queue.remove(entry)
            raise

    def release(self, model: str) -> None:
        self.active[model] = max(self.active.get(model, 0) - 1, 0)
        self.dispatch(model)

    def dispatch(self, model: str) -> None:
        """Let waiters through while there are free slots (also called when workers come and go)."""
        queue = self.queues.get(model)
        if queue and self.capacity(model) == 0:  # the last worker went: nothing will free a slot
            while (waiter := queue.pop()) is not None:
                if not waiter.done():
                    waiter.set_exception(NoCapacity())
            return
        while queue and self.active.get(model, 0) < self.capacity(model):
            waiter = queue.pop()
            if waiter is None:
                break
            if not waiter.done():
                self.active[model] = self.active.get(model, 0) + 1
                waiter.set_result(None)

    def dispatch_all(self) -> None:
        for model in list(self.queues):
            self.dispatch(model)
