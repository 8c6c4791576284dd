"""What routing policies see: snapshots of workers and of one request, the decision, and the bounded state."""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.routing.prefix_index import PrefixIndex
from cluster.routing.sessions import SessionPins
from worker.shared.load import Load


@dataclass(frozen=True)
class WorkerView:
    """What a policy sees of one worker at decision time."""

    worker_id: str
    ready: bool
    inflight: int  # the router's own count of requests on this worker now
    # What its agent reports; rates 0 = not measured yet (the fleet's median is used).
    load: Load = field(default_factory=Load)

    @property
    def busy(self) -> int:
        """Requests ahead of a new one: ours in flight and those waiting in the engine."""
        return self.inflight + self.load.waiting


@dataclass(frozen=True)
class RequestView:
    """What a policy sees of one request."""

    model: str
    session: str | None = None
    block_hashes: tuple[int, ...] = ()
    prompt_chars: int = 0


@dataclass(frozen=True)
class Decision:
    worker_id: str
    reason: str  # session | imbalance | prefix_hit | cost | least_loaded | round_robin


@dataclass
class RoutingState:
    """Bounded state the policies read; owned and updated by the router."""

    turn: int = 0
    prefixes: PrefixIndex = field(default_factory=PrefixIndex)
    sessions: SessionPins[str] = field(default_factory=SessionPins)
