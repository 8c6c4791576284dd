"""Session pins: a session (the `user` field or an X-Session-Id header) keeps its worker for a TTL, while the
policy finds that worker not much more loaded than the least loaded one (cluster/routing/prefix.py)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class SessionPins(Generic[T]):
    """Bounded (LRU beyond max_sessions) and expiring (ttl_s after the last use). Sessions are kept as 16-byte
    digests: a full table costs the same whatever the clients send as ids."""

    def __init__(self, ttl_s: float = 300.0, max_sessions: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._pins: OrderedDict[bytes, tuple[T, float]] = OrderedDict()

    def get(self, session: str, now: float) -> T | None:
        session_key = _key(session)
        pin = self._pins.get(session_key)
        if pin is None:
            return None
        worker_id, last_used = pin
        if now - last_used > self.ttl_s:
            del self._pins[session_key]
            return None
        return worker_id

    def pin(self, session: str, worker_id: T, now: float) -> None:
        session_key = _key(session)
        self._pins[session_key] = (worker_id, now)
        self._pins.move_to_end(session_key)
        while len(self._pins) > self.max_sessions:
            self._pins.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pins)


def _key(session: str) -> bytes:
    return hashlib.blake2b(session.encode(errors="surrogatepass"), digest_size=16).digest()
