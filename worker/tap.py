"""Taps: one stream per router connection carrying the replies of many streamed requests.

A continuous-batching engine decodes all its sequences in one step, so their tokens come together; on their
own Generate calls each would be one gRPC message, and at the router one wake-up of gRPC's threads and its event
loop each (most of the router's cost per token at an unhurried pace). On a tap, what the requests queued while
the last batch was being sent leaves as one message. Each request keeps its own flow control: at most
a window of its replies unacknowledged by the router (Credit; the router names the window), so a slow client
holds back its own request (and its engine stream, by TCP), never the others on the tap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from proto import orchard_pb2 as pb

WINDOW_BYTES = (16 * 1024, 4 * 1024 * 1024)  # the windows a router may ask for, per request
MAX_TAPS = 8  # per agent: a router, one taking over from it, and what reconnects leave until they end
MAX_BATCH_BYTES = 4 * 1024 * 1024  # one message, well inside gRPC's receive limit
PART_OVERHEAD = 64  # a part's key, flags and framing beside its reply: what a batch counts without measuring it


class TapClosed(Exception):
    """The router's tap ended (its connection went): a request that was to continue on it cannot."""


class _Window:
    def __init__(self) -> None:
        self.unacked = 0
        self.open = asyncio.Event()
        self.open.set()


class Tap:
    def __init__(self, tap_id: str, window_bytes: int) -> None:
        self.tap_id = tap_id
        self.window = min(max(window_bytes, WINDOW_BYTES[0]), WINDOW_BYTES[1])
        self.closed = False
        self._parts: list[pb.TapPart] = []
        self._ready = asyncio.Event()
        self._windows: dict[str, _Window] = {}

    def join(self, key: str) -> bool:
        """A request to send on this tap under `key` (False: closed, or the key is taken)."""
        if self.closed or not key or key in self._windows:
            return False
        self._windows[key] = _Window()
        return True

    def leave(self, key: str) -> None:
        self._windows.pop(key, None)

    async def put(self, key: str, reply: pb.GenerateReply | None) -> None:
        """Queue a request's reply (None: its end); waits while its window is full. TapClosed once closed."""
        window = self._windows[key]
        while window.unacked >= self.window and not self.closed:
            window.open.clear()
            await window.open.wait()
        if self.closed:
            raise TapClosed(self.tap_id)
        if reply is None:
            self._parts.append(pb.TapPart(key=key, end=True))
        else:
            size = reply.ByteSize()
            window.unacked += size
            self._parts.append(pb.TapPart(key=key, reply=reply, size=size))
        self._ready.set()

    def credit(self, key: str, size: int) -> None:
        """The router wrote `size` more bytes of the request's replies to its client."""
        window = self._windows.get(key)
        if window is not None:
            window.unacked = max(window.unacked - size, 0)
            if window.unacked < self.window:
                window.open.set()

    async def batches(self) -> AsyncIterator[pb.TapBatch]:
        """Everything queued since the last batch (up to MAX_BATCH_BYTES), as one message; once closed, what
        was queued before, then the end."""
        while self._parts or not self.closed:
            await self._ready.wait()
            taken = size = 0
            while taken < len(self._parts) and size < MAX_BATCH_BYTES:
                size += self._parts[taken].size + PART_OVERHEAD
                taken += 1
            parts, self._parts = self._parts[:taken], self._parts[taken:]
            if not self._parts:
                self._ready.clear()
            if parts:
                yield pb.TapBatch(parts=parts)

    def close(self) -> None:
        """Its stream ended: requests waiting on a window, or putting next, get TapClosed."""
        self.closed = True
        self._ready.set()
        for window in self._windows.values():
            window.open.set()


class Taps:
    """The open taps of this agent, by id (bounded: the oldest goes first)."""

    def __init__(self) -> None:
        self._open: dict[str, Tap] = {}

    def get(self, tap_id: str) -> Tap | None:
        return self._open.get(tap_id) if tap_id else None

    def open(self, tap_id: str, window_bytes: int) -> Tap:
        if (same := self._open.pop(tap_id, None)) is not None:  # the router reopened it: the old stream is done
            same.close()
        if len(self._open) >= MAX_TAPS:
            oldest = next(iter(self._open))
            self._open.pop(oldest).close()
        tap = self._open[tap_id] = Tap(tap_id, window_bytes)
        return tap

    def close(self, tap: Tap) -> None:
        tap.close()
        if self._open.get(tap.tap_id) is tap:
            del self._open[tap.tap_id]


class Outlet:
    """Where one Generate call's replies go: all on the call, or the first on it (marked) and the rest on the
    tap, then the end part there (after which the call's status says how the request ended)."""

    def __init__(self, tap: Tap | None, key: str) -> None:
        self.tap = tap if tap is not None and tap.join(key) else None
        self.key, self.sent_first = key, False

    async def send(self, reply: pb.GenerateReply) -> pb.GenerateReply | None:
        """The reply to yield on the call, or None: it went on the tap."""
        if self.tap is None:
            return reply
        if not self.sent_first:
            self.sent_first = True
            marked = pb.GenerateReply()
            marked.CopyFrom(reply)  # (a heartbeat is one shared message)
            marked.rest_on_tap = True
            return marked
        await self.tap.put(self.key, reply)
        return None

    async def end(self) -> None:
        if self.tap is not None and self.sent_first:
            await self.tap.put(self.key, None)

    def close(self) -> None:
        if self.tap is not None:
            self.tap.leave(self.key)
