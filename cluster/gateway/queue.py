"""Weighted fair queuing across teams for one model (start-time fair queuing), bounded; and the admission
controller that lets a model's requests through only while its workers have free slots.

A request of cost c from a team of weight w gets the tag start = max(virtual time, that team's last finish),
finish = start + c / w; the smallest start goes first and advances the virtual time. A team that was idle
starts at the current virtual time, so a backlog elsewhere cannot starve it, and backlogged teams share in
proportion to their weights.

Slots are not preempted, so a fair queue alone still makes a light team wait for the next slot a heavy team
frees. Each model therefore has a few spare slots (one per ready worker) lent only to a team holding less than
its weighted share of the slots: a light team starts at once beside a heavy team's backlog, and a team alone,
or at its share, never goes past the workers' caps.
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


@dataclass(frozen=True)
class _Waiter:
    team: str
    weight: float
    granted: asyncio.Future[None]


class FairQueue(Generic[T]):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.vtime = 0.0
        self._finish: dict[str, float] = {}  # per team: its last finish tag (pruned once the past)
        self._queued: dict[str, int] = {}
        self._weights: dict[str, float] = {}
        self._heap: list[_Entry[T]] = []
        self._count = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._count

    def queued(self, team: str) -> int:
        return self._queued.get(team, 0)

    def weights(self) -> dict[str, float]:
        """The weight of every team with a request waiting (as given with its newest request)."""
        return {team: self._weights[team] for team in self._queued}

    def push(self, team: str, weight: float, cost: float, item: T) -> _Entry[T]:
        if self._count >= self.limit:
            raise QueueFull
        start = max(self.vtime, self._finish.get(team, 0.0))
        self._finish[team] = start + cost / max(weight, 1e-6)
        entry = _Entry(start, next(self._seq), team, item)
        heapq.heappush(self._heap, entry)
        self._count += 1
        self._queued[team] = self._queued.get(team, 0) + 1
        self._weights[team] = weight
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
            del self._weights[team]
        # Bounded: an idle team whose tag the virtual time has passed needs no tag (max() gives vtime anyway).
        for idle in [t for t, finish in self._finish.items() if t not in self._queued and finish <= self.vtime]:
            del self._finish[idle]


@dataclass(frozen=True)
class Capacity:
    """What a model's ready workers take at once: the sum of their slots, and spare slots (one per worker)."""

    slots: int
    spare: int = 0


@dataclass
class _Holding:
    """Per model: requests in flight, by team, and each busy team's weight (both pruned at zero)."""

    total: int = 0
    teams: dict[str, int] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def take(self, team: str, weight: float) -> None:
        self.total += 1
        self.teams[team] = self.teams.get(team, 0) + 1
        self.weights[team] = weight

    def give(self, team: str) -> None:
        self.total = max(self.total - 1, 0)
        left = self.teams.get(team, 0) - 1
        if left > 0:
            self.teams[team] = left
        else:
            self.teams.pop(team, None)
            self.weights.pop(team, None)


class Admission:
    """Per model: at most `capacity(model).slots` requests in flight (the sum of its ready workers' slots), plus
    the spare slots for teams below their share; the rest wait in a bounded fair queue and go as slots free."""

    def __init__(self, capacity: Callable[[str], Capacity], max_queue: int) -> None:
        self.capacity = capacity
        self.max_queue = max_queue
        self.holding: dict[str, _Holding] = {}
        self.queues: dict[str, FairQueue[_Waiter]] = {}

    def waiting(self, model: str) -> int:
        """Requests queued for the model now (what scaling reads)."""
        queue = self.queues.get(model)
        return len(queue) if queue else 0

    def active(self, model: str) -> int:
        holding = self.holding.get(model)
        return holding.total if holding else 0

    async def acquire(self, model: str, team: str, weight: float, cost: float, timeout_s: float) -> None:
        """Return once the request holds a slot. Raises NoCapacity, QueueFull, or TimeoutError past `timeout_s`."""
        capacity = self.capacity(model)
        if capacity.slots == 0:
            raise NoCapacity
        queue = self.queues.setdefault(model, FairQueue(self.max_queue))
        holding = self.holding.setdefault(model, _Holding())
        if (not queue and holding.total < capacity.slots) or self._lend(holding, queue, capacity, team, weight):
            holding.take(team, weight)
            return
        waiter = _Waiter(team, weight, asyncio.get_running_loop().create_future())
        entry = queue.push(team, weight, cost, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), timeout_s)
        except BaseException:
            granted = waiter.granted
            if granted.done() and not granted.cancelled() and granted.exception() is None:
                self.release(model, team)  # granted just as we gave up: hand the slot on
            elif not granted.done():
                granted.cancel()
                queue.remove(entry)
            raise

    @staticmethod
    def _lend(holding: _Holding, queue: FairQueue[_Waiter], capacity: Capacity, team: str, weight: float) -> bool:
        """A spare slot, for a team that would still hold no more than its weighted share of the slots."""
        if holding.total >= capacity.slots + capacity.spare or queue.queued(team):
            return False
        weights = {**holding.weights, **queue.weights(), team: weight}
        share = capacity.slots * weight / sum(weights.values())
        return holding.teams.get(team, 0) + 1 <= share

    def release(self, model: str, team: str) -> None:
        holding = self.holding.get(model)
        if holding is not None:
            holding.give(team)
            if not holding.total:
                del self.holding[model]
        self.dispatch(model)

    def dispatch(self, model: str) -> None:
        """Let waiters through while there are free slots (also called when workers come and go)."""
        queue = self.queues.get(model)
        if not queue:
            return
        capacity = self.capacity(model)
        if capacity.slots == 0:  # the last worker went: nothing will free a slot
            while (waiter := queue.pop()) is not None:
                if not waiter.granted.done():
                    waiter.granted.set_exception(NoCapacity())
            return
        holding = self.holding.setdefault(model, _Holding())
        while queue and holding.total < capacity.slots:
            waiter = queue.pop()
            if waiter is None:
                break
            if not waiter.granted.done():
                holding.take(waiter.team, waiter.weight)
                waiter.granted.set_result(None)

    def dispatch_all(self) -> None:
        for model in list(self.queues):
            self.dispatch(model)
