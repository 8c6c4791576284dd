"""A circuit breaker per worker: after consecutive failures (a transport error, or a worker that does not even
accept a call within the accept deadline: a hung or sleeping host) the router stops sending it work; after a
cool-down one request probes it (half-open); a success closes the breaker, a failure opens it for twice as long.

Time is passed in, so the state machine is tested without waiting.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

FAILURES_TO_OPEN = 2
COOL_DOWN_S = 2.0
MAX_COOL_DOWN_S = 30.0


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"  # one probe request allowed

    @property
    def gauge(self) -> int:
        """The value on /metrics (orchard_worker_breaker_state): 0 closed, 1 half-open, 2 open."""
        return {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}[self]


@dataclass
class Breaker:
    failures: int = 0  # consecutive
    opened_at: float | None = None
    cool_down_s: float = COOL_DOWN_S
    probing: bool = False  # the half-open probe is in flight

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now - self.opened_at < self.cool_down_s else BreakerState.HALF_OPEN

    def allows(self, now: float) -> bool:
        state = self.state(now)
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self.probing)

    def on_attempt(self, now: float) -> bool:
        """A request is sent: in half-open it is the probe (True), and no other goes until it ends."""
        self.probing = self.state(now) is BreakerState.HALF_OPEN
        return self.probing

    def on_success(self) -> None:
        self.failures, self.opened_at, self.cool_down_s, self.probing = 0, None, COOL_DOWN_S, False

    def on_failure(self, now: float) -> None:
        self.failures += 1
        if self.probing:  # the probe failed: open again, for longer
            self.opened_at, self.cool_down_s = now, min(self.cool_down_s * 2, MAX_COOL_DOWN_S)
        elif self.failures >= FAILURES_TO_OPEN and self.opened_at is None:
            self.opened_at = now
        self.probing = False

    def on_abandoned(self) -> None:
        """The attempt ended with no verdict (the client left, the request was cancelled): the probe may go again."""
        self.probing = False

    def on_reconnect(self) -> None:
        """The agent's stream came back (a restarted agent, a host back on the network): start afresh."""
        self.on_success()
