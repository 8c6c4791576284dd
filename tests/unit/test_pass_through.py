"""A tapped stream's chunks written straight to the client's connection while its relay waits
(forwarding.Reads.pass_through, connections.BodyWriter): the same bytes uvicorn's own `send` writes, in the same
order as the relay's, and the relay's path whenever the connection cannot take them now."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, cast

import grpc
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from cluster.router.connections import BodyWriter
from cluster.router.errors import Dialect
from cluster.router.forwarding import Ended, Forwarder, Reads, Started
from cluster.router.intake import Incoming
from cluster.router.metrics import RouterMetrics
from cluster.router.passthrough import Outlet
from cluster.router.registry import Registry
from cluster.router.tap import CREDIT_EVERY, Inbox, TapClient
from cluster.routing.choose import RequestView
from proto import orchard_pb2 as pb
from worker.shared.launch import RouterConfig


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def _cycle(transport: _Transport, method: str = "POST") -> RequestResponseCycle:
    scope: Any = {"type": "http", "method": method, "path": "/", "http_version": "1.1", "headers": []}
    return RequestResponseCycle(
        scope=scope,
        transport=cast(Any, transport),
        flow=FlowControl(cast(Any, transport)),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )


def test_a_body_writer_writes_what_uvicorns_send_writes_and_only_when_it_would_go_out_at_once() -> None:
    async def main() -> None:
        body = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
        ours, theirs = _Transport(), _Transport()
        mine, uvicorns = _cycle(ours), _cycle(theirs)
        writer = BodyWriter(mine)
        assert not writer.ready()  # no response begun
        for cycle in (mine, uvicorns):
            await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
        assert writer.ready()
        writer.write(body)
        await uvicorns.send({"type": "http.response.body", "body": body, "more_body": True})
        assert ours.written[-1] == theirs.written[-1] == b"%x\r\n" % len(body) + body + b"\r\n"
        mine.flow.pause_writing()  # the client reads slowly: `send` waits for it, the writer must not write
        assert not writer.ready()
        mine.flow.resume_writing()
        assert writer.ready()
        await mine.send({"type": "http.response.body", "body": b"", "more_body": False})
        assert not writer.ready()  # finished
        head = BodyWriter(_cycle(_Transport(), method="HEAD"))
        await head.cycle.send({"type": "http.response.start", "status": 200, "headers": []})
        assert not head.ready()  # a HEAD response has no body to write

    asyncio.run(main())


class _Writer:
    """A connection that takes bytes now unless told it cannot; what it took goes into `log`."""

    def __init__(self, log: list[tuple[str, bytes]]) -> None:
        self.log, self.open = log, True

    def ready(self) -> bool:
        return self.open

    def write(self, body: bytes) -> None:
        self.log.append(("direct", body))


class _Call:
    """A Generate call whose first reply puts the rest on the tap, then ends well once its end part came."""

    def __init__(self) -> None:
        self.replies = [pb.GenerateReply(chunks=pb.Chunks(items=[b"0"]), rest_on_tap=True)]

    async def read(self) -> Any:
        return self.replies.pop(0) if self.replies else grpc.aio.EOF

    def cancel(self) -> None:
        pass

    def cancelled(self) -> bool:
        return False


class _Stub:
    def __init__(self) -> None:
        self.credits: list[int] = []

    async def Credit(self, request: pb.CreditRequest, **options: float) -> pb.CreditReply:
        self.credits.append(request.bytes)
        return pb.CreditReply()


def _part(key: str, text: bytes | None) -> pb.TapPart:
    if text is None:
        return pb.TapPart(key=key, end=True)
    return pb.TapPart(key=key, reply=pb.GenerateReply(chunks=pb.Chunks(items=[text])), size=100_000)


async def _relay(gap_s: float) -> tuple[Inbox, list[tuple[str, bytes]], _Writer, list[Ended], asyncio.Task[None]]:
    """A relay of a tapped stream with an outlet, read by a client that logs each frame; parked on the tap."""
    inbox = TapClient(_Stub(), "w").join()
    assert inbox is not None
    reads = Reads(_Call(), "w", gap_s, inbox)
    first = await reads.read()
    handle = SimpleNamespace(worker_id="w", served=0)
    started = Started(cast(Any, handle), reads.call, reads, first)
    forwarder = Forwarder(Registry([]), RouterConfig(workers=("127.0.0.1:1",)), RouterMetrics())
    incoming = Incoming(
        "id", pb.ENDPOINT_CHAT_COMPLETIONS, Dialect.OPENAI, "m", True, False, b"{}", RequestView("m", None, (), 0)
    )
    log: list[tuple[str, bytes]] = []
    ends: list[Ended] = []
    writer = _Writer(log)
    relay = forwarder.relay(started, incoming, ends.append, Outlet(cast(Any, writer)))

    async def client() -> None:
        async for frame in relay:
            log.append(("relay", frame))

    task = asyncio.create_task(client())
    await _parked(inbox)  # the first frame written, the relay waits on the tap
    return inbox, log, writer, ends, task


async def _parked(inbox: Inbox) -> None:
    for _ in range(1000):
        if inbox.waiter is not None and not inbox.waiter.done():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the relay does not wait on the tap")


def _batch(inbox: Inbox, *texts: bytes | None) -> None:
    inbox.tap.dispatch(pb.TapBatch(parts=[_part(inbox.key, text) for text in texts]))


def test_chunks_go_straight_out_while_the_relay_waits_and_through_it_in_order_when_the_connection_is_full() -> None:
    async def main() -> tuple[list[tuple[str, bytes]], list[Ended], list[int]]:
        inbox, log, writer, ends, task = await _relay(gap_s=5.0)
        _batch(inbox, b"1", b"2")  # came together: one write
        _batch(inbox, b"3")
        writer.open = False  # the client stopped reading: these wait for the relay, which waits for the client
        _batch(inbox, b"4")
        writer.open = True  # it reads again, but 4 is queued: 5 must not jump ahead of it
        _batch(inbox, b"5")
        await _parked(inbox)
        _batch(inbox, b"6", b"7", None)  # the relay caught up and waits again; the end goes through it
        await asyncio.wait_for(task, 5)
        await asyncio.sleep(0.01)  # the credits' call
        return log, ends, cast(Any, inbox.tap.stub).credits

    log, ends, credits = asyncio.run(main())
    assert log == [
        ("relay", b"data: 0\n\n"),
        ("direct", b"data: 1\n\ndata: 2\n\n"),
        ("direct", b"data: 3\n\n"),
        ("relay", b"data: 4\n\n"),
        ("relay", b"data: 5\n\n"),
        ("direct", b"data: 6\n\ndata: 7\n\n"),
        ("relay", b"data: [DONE]\n\n"),
    ]
    assert [(e.status, e.usage.completion_tokens) for e in ends] == [(200, 8)]  # every chunk counted, either way
    assert 6 * 100_000 <= sum(credits) <= 7 * 100_000  # what went out either way is acknowledged to the agent, once


def test_chunks_written_straight_out_count_as_the_worker_speaking_for_the_gap_deadline() -> None:
    async def main() -> list[Ended]:
        inbox, _, _, ends, task = await _relay(gap_s=0.5)
        for i in range(8):  # 1.2 s of tokens, each well within the gap, none waking the relay
            _batch(inbox, b"%d" % i)
            await asyncio.sleep(0.15)
        _batch(inbox, None)
        await asyncio.wait_for(task, 5)
        return ends

    assert [e.status for e in asyncio.run(main())] == [200]


def test_whenever_the_relay_waits_less_than_half_a_window_is_owed_to_the_agent_either_way() -> None:
    """The agent sends nothing more for a request once a window is owed: the relay must not wait owing that."""

    async def main() -> list[int]:
        inbox, _, writer, _, task = await _relay(gap_s=5.0)
        owed = []
        for i in range(6):
            writer.open = i % 3 != 2  # mostly straight out, now and then through the relay
            _batch(inbox, b"%d" % i)
            await _parked(inbox)
            await asyncio.sleep(0.01)  # the credits' call
            taken = (i + 1) * 100_000
            owed.append(taken - sum(cast(Any, inbox.tap.stub).credits))
        _batch(inbox, None)
        await asyncio.wait_for(task, 5)
        return owed

    assert all(0 <= owed < CREDIT_EVERY for owed in asyncio.run(main()))


class _Sink:
    def __init__(self) -> None:
        self.written = list[bytes]()

    def take(self, part: pb.TapPart, size: int) -> bytes | None:
        return part.reply.chunks.items[0]

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_a_reply_that_cannot_be_relayed_ends_its_own_request_with_an_error_and_not_the_others_on_the_tap() -> None:
    async def main() -> tuple[list[tuple[str, bytes]], list[Ended], list[bytes], bool]:
        inbox, log, _, ends, task = await _relay(gap_s=5.0)
        other = inbox.tap.join()
        assert other is not None
        waiting = asyncio.ensure_future(other.get())
        await asyncio.sleep(0)
        other.sink = sink = _Sink()
        malformed = pb.GenerateReply(chunks=pb.Chunks(events=["e"], items=[b"x", b"y"]))  # one name, two items
        parts = [_part(inbox.key, b"1"), pb.TapPart(key=inbox.key, reply=malformed, size=10)]
        parts += [_part(other.key, b"a"), _part(inbox.key, b"2"), _part(inbox.key, None), _part(other.key, b"b")]
        inbox.tap.dispatch(pb.TapBatch(parts=parts))
        await asyncio.wait_for(task, 5)
        waiting.cancel()
        return log, ends, sink.written, inbox.tap.open

    log, ends, other, still_open = asyncio.run(main())
    assert [way for way, _ in log] == ["relay", "relay"]  # the first reply, then the error: nothing after the hole
    error = log[-1][1]
    assert b'"code": "bad_reply"' in error and error.endswith(b"data: [DONE]\n\n")
    assert [e.status for e in ends] == [502]  # the router's failure, not a client that left
    assert other == [b"ab"] and still_open  # the tap and its other requests go on
