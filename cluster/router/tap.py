"""The router's end of an agent's tap (worker/tap.py): one stream per agent connection that brings the replies
after the first of every streamed request, many requests' tokens in one message; here they are sorted into each
request's inbox. The router acknowledges what it wrote to each client (Credit), so the agent holds back only a
request whose client reads slowly. An agent without taps (from before them) replies on each call, as before."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from typing import Any, Protocol

import grpc

from proto import orchard_pb2 as pb

log = logging.getLogger(__name__)

# Per request: what this router may hold for a client that reads slowly. Within the bounds agents take
# (worker/tap.py: 16 KiB to 4 MiB), so an agent's window is this one and crediting by halves never stalls it.
WINDOW_BYTES = 256 * 1024
CREDIT_EVERY = WINDOW_BYTES // 2
CREDIT_DEADLINE_S = 10.0  # acknowledge in halves of the window: the agent never waits on a reader that keeps up
# A window, and the batch that crossed it (an agent reads its engine ahead by up to 256 KiB): beyond that the agent
# ignores its windows, and that request fails, not the router.
MAX_INBOX_BYTES = 4 * WINDOW_BYTES


class Sink(Protocol):
    """Takes a request's parts straight from the tap (cluster/router/passthrough.py)."""

    def take(self, part: pb.TapPart, size: int) -> bytes | None:
        """The part's bytes, written after the batch is sorted; None: the reader takes the part."""

    def write(self, data: bytes) -> None: ...


class TapBroken(Exception):
    """The tap's stream ended with requests still reading from it."""


class Unrelayable(Exception):
    """A part of the request's reply could not be relayed (framed or written): the request ends now."""


class Inbox:
    """One request's parts, in order; the reader waits on one future at a time (no task per read)."""

    def __init__(self, tap: TapClient, key: str) -> None:
        self.tap, self.key = tap, key
        self.tap_id = tap.tap_id
        self.crediting: asyncio.Task[None] | None = None
        self.owed = 0  # bytes written and not yet acknowledged to the agent
        self.parts: collections.deque[tuple[pb.TapPart, int]] = collections.deque()  # with its reply's size
        self.held = 0  # bytes queued and not yet taken
        self.waiter: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None
        self.sink: Sink | None = None  # takes parts while the reader waits with nothing queued (it wrote all it took)
        self.passed: list[bytes] = []  # what the sink took from the batch being sorted: written once it is

    def put(self, part: pb.TapPart) -> bool:
        """The part for the reader, or taken by the sink; True: the first the sink took from this batch."""
        if isinstance(self.failure, Unrelayable):
            return False  # it ends without the rest
        size = part.size or (part.reply.ByteSize() if not part.end else 0)  # measured by the agent, unless older
        if self.sink is not None and not self.parts and self._waiting():
            framed = self.sink.take(part, size)
            if framed is not None:
                self.passed.append(framed)
                return len(self.passed) == 1
        self.parts.append((part, size))
        self.held += size
        if self.held > MAX_INBOX_BYTES:
            self.fail(TapBroken(f"the agent sent more than {MAX_INBOX_BYTES} bytes past its window"))
        self._wake()
        return False

    def flush(self) -> None:
        """What the sink took from the batch just sorted, in one write."""
        data = b"".join(self.passed)
        self.passed.clear()
        if data and self.sink is not None:
            self.sink.write(data)

    def fail(self, exc: BaseException) -> None:
        """The next read raises `exc` (after what already came, unless it is a deadline)."""
        self.failure = self.failure or exc
        self._wake()

    def abort(self, exc: Exception) -> None:
        """A part could not be relayed: the next read fails, and nothing after that part goes out (a reply with a
        hole in it must not pass for a whole one)."""
        self.parts.clear()
        self.passed.clear()
        self.held, self.sink = 0, None
        self.failure = Unrelayable(repr(exc))
        self._wake()

    def _waiting(self) -> bool:
        return self.waiter is not None and not self.waiter.done()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self) -> tuple[pb.TapPart, int]:
        """The next part and its reply's size."""
        while not self.parts:
            if self.failure is not None:
                raise self.failure
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        part, size = self.parts.popleft()
        self.held -= size
        return part, size

    def credit(self, size: int) -> None:
        """Tell the agent `size` more bytes reached the client (one Credit call at a time; what comes meanwhile
        goes with the next)."""
        self.owed += size
        if self.crediting is None or self.crediting.done():
            self.crediting = asyncio.create_task(self._send_credits())

    async def _send_credits(self) -> None:
        while self.owed:
            owed, self.owed = self.owed, 0
            await self.tap.credit(self.key, owed)

    def close(self) -> None:
        """Its request ended: no more parts, no more credits."""
        self.sink = None
        self.passed.clear()
        if self.crediting is not None:
            self.crediting.cancel()
        self.tap.leave(self.key)


class TapClient:
    """One agent's tap, opened by the registry and read until it ends. Retired (its connection replaced: a
    certificate rotation, the worker removed), it takes no new requests and ends once those on it ended."""

    def __init__(self, stub: Any, worker: str) -> None:
        self.stub, self.worker = stub, worker
        self.tap_id = uuid.uuid4().hex
        self.inboxes: dict[str, Inbox] = {}
        self.open = True  # takes new requests: until its stream ends or it retires
        self.unsupported = False  # an agent from before taps
        self._call: Any = None

    async def run(self) -> None:
        """Read the tap, sorting parts into inboxes, until it ends; then every reader learns it broke."""
        self._call = call = self.stub.Tap(pb.TapRequest(tap_id=self.tap_id, window_bytes=WINDOW_BYTES))
        why = "the agent's tap ended"
        try:
            async for batch in call:
                self.dispatch(batch)
        except grpc.aio.AioRpcError as exc:
            why = f"the agent's tap failed: {exc.code().name}"
            self.unsupported = exc.code() is grpc.StatusCode.UNIMPLEMENTED
        except asyncio.CancelledError:
            if self.open or self.inboxes:  # not our own end of a retired tap
                raise
        finally:
            call.cancel()
            self.open = False
            for inbox in self.inboxes.values():
                inbox.fail(TapBroken(why))

    def dispatch(self, batch: pb.TapBatch) -> None:
        """Sort a batch's parts into inboxes; then what sinks took goes out, one write per request (tokens of one
        request that came in one batch travel together). A reply that cannot be relayed fails its own request,
        not the others on the tap."""
        passed: list[Inbox] = []
        for part in batch.parts:
            inbox = self.inboxes.get(part.key)
            if inbox is None:  # a request that ended meanwhile: its late parts go nowhere
                continue
            try:
                if inbox.put(part):
                    passed.append(inbox)
            except Exception as exc:
                self._unrelayable(inbox, exc)
        for inbox in passed:
            try:
                inbox.flush()
            except Exception as exc:
                self._unrelayable(inbox, exc)

    def _unrelayable(self, inbox: Inbox, exc: Exception) -> None:
        log.error("a reply from worker %s could not be relayed; its request ends: %r", self.worker, exc)
        inbox.abort(exc)

    def join(self) -> Inbox | None:
        """An inbox, under a key of its own, for a request about to start (None: the tap takes none now)."""
        if not self.open:
            return None
        key = uuid.uuid4().hex
        inbox = self.inboxes[key] = Inbox(self, key)
        return inbox

    def leave(self, key: str) -> None:
        self.inboxes.pop(key, None)
        if not self.open and not self.inboxes and self._call is not None:
            self._call.cancel()  # retired and drained

    def retire(self) -> None:
        self.open = False
        self.leave("")

    async def credit(self, key: str, size: int) -> None:
        # The agent went or hangs: its requests end anyway (their calls, or the gap deadline, say how).
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await self.stub.Credit(pb.CreditRequest(tap_id=self.tap_id, key=key, bytes=size), timeout=CREDIT_DEADLINE_S)
