"""The router's end of an agent's tap (worker/tap.py): one stream per agent connection that brings the replies
after the first of every streamed request, many requests' tokens in one message; here they are sorted into each
request's inbox. The router acknowledges what it wrote to each client (Credit), so the agent holds back only a
request whose client reads slowly. An agent without taps (from before them) replies on each call, as before."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from typing import Any

import grpc

from proto import orchard_pb2 as pb

WINDOW_BYTES = 256 * 1024  # per request: what this router may hold for a client that reads slowly
CREDIT_EVERY = WINDOW_BYTES // 2  # acknowledge in halves of the window: the agent never waits on a reader that keeps up
# A window, and the batch that crossed it (an agent reads its engine ahead by up to 256 KiB): beyond that the agent
# ignores its windows, and that request fails, not the router.
MAX_INBOX_BYTES = 4 * WINDOW_BYTES


class TapBroken(Exception):
    """The tap's stream ended with requests still reading from it."""


class Inbox:
    """One request's parts, in order; the reader waits on one future at a time (no task per read)."""

    def __init__(self, tap: TapClient, request_id: str) -> None:
        self.tap, self.request_id = tap, request_id
        self.tap_id = tap.tap_id
        self.crediting: asyncio.Task[None] | None = None
        self.owed = 0  # bytes written and not yet acknowledged to the agent
        self.parts: collections.deque[pb.TapPart] = collections.deque()
        self.held = 0  # bytes queued and not yet taken
        self.waiter: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None

    def put(self, part: pb.TapPart) -> None:
        self.parts.append(part)
        self.held += part.reply.ByteSize()
        if self.held > MAX_INBOX_BYTES:
            self.fail(TapBroken(f"the agent sent more than {MAX_INBOX_BYTES} bytes past its window"))
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """The next read raises `exc` (after what already came, unless it is a deadline)."""
        self.failure = self.failure or exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self) -> pb.TapPart:
        while not self.parts:
            if self.failure is not None:
                raise self.failure
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        part = self.parts.popleft()
        self.held -= part.reply.ByteSize()
        return part

    def credit(self, size: int) -> None:
        """Tell the agent `size` more bytes reached the client (one Credit call at a time; what comes meanwhile
        goes with the next)."""
        self.owed += size
        if self.crediting is None or self.crediting.done():
            self.crediting = asyncio.create_task(self._send_credits())

    async def _send_credits(self) -> None:
        while self.owed:
            owed, self.owed = self.owed, 0
            await self.tap.credit(self.request_id, owed)

    def close(self) -> None:
        self.tap.leave(self.request_id)


class TapClient:
    """One agent connection's tap: opened by the registry when the agent connects, read until it ends."""

    def __init__(self, stub: Any, worker: str) -> None:
        self.stub, self.worker = stub, worker
        self.tap_id = uuid.uuid4().hex
        self.inboxes: dict[str, Inbox] = {}
        self.open = True  # until its stream ends (or the agent has no taps)
        self.unsupported = False  # an agent from before taps

    async def run(self) -> None:
        """Read the tap, sorting parts into inboxes, until it ends; then every reader learns it broke."""
        call = self.stub.Tap(pb.TapRequest(tap_id=self.tap_id, window_bytes=WINDOW_BYTES))
        why = "the agent's tap ended"
        try:
            async for batch in call:
                for part in batch.parts:
                    inbox = self.inboxes.get(part.request_id)
                    if inbox is not None:  # a request that ended meanwhile: its late parts go nowhere
                        inbox.put(part)
        except grpc.aio.AioRpcError as exc:
            why = f"the agent's tap failed: {exc.code().name}"
            self.unsupported = exc.code() is grpc.StatusCode.UNIMPLEMENTED
        finally:
            call.cancel()
            self.open = False
            for inbox in self.inboxes.values():
                inbox.fail(TapBroken(why))

    def join(self, request_id: str) -> Inbox | None:
        """An inbox for a request about to start (None: the tap is not open)."""
        if not self.open:
            return None
        inbox = self.inboxes[request_id] = Inbox(self, request_id)
        return inbox

    def leave(self, request_id: str) -> None:
        self.inboxes.pop(request_id, None)

    async def credit(self, request_id: str, size: int) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):  # the agent went: its requests end anyway
            await self.stub.Credit(pb.CreditRequest(tap_id=self.tap_id, request_id=request_id, bytes=size))
