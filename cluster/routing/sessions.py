"""Session pins: a session (the `user` field or an X-Session-Id header) keeps its worker for a TTL."""

from __future__ import annotations

from collections import OrderedDict


class SessionPins:
    """Bounded (LRU beyond max_sessions) and expiring (ttl_s after the last use)."""

    def __init__(self, ttl_s: float = 300.0, max_sessions: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, session: str, now: float) -> str | None:
        pin = self._pins.get(session)
        if pin is None:
            return None
        worker_id, last_used = pin
        if now - last_used > self.ttl_s:
            del self._pins[session]
            return None
        return worker_id

    def pin(self, session: str, worker_id: str, now: float) -> None:
        self._pins[session] = (worker_id, now)
        self._pins.move_to_end(session)
        while len(self._pins) > self.max_sessions:
            self._pins.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pins)
