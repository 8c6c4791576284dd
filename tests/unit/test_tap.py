"""Taps, each end on its own: the agent's windows and batches (worker/tap.py), the router's inboxes and its
reads from them under the gap deadline (cluster/router/tap.py, forwarding.Reads)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from cluster.router.forwarding import Reads, _Silent, _TapCut
from cluster.router.tap import Inbox, TapBroken, TapClient
from proto import orchard_pb2 as pb
from worker.tap import WINDOW_BYTES, Outlet, Tap, TapClosed, Taps


def chunk(text: bytes) -> pb.GenerateReply:
    return pb.GenerateReply(chunks=pb.Chunks(items=[text]))


def test_what_requests_queued_meanwhile_leaves_as_one_batch() -> None:
    async def main() -> list[list[tuple[str, bool]]]:
        tap = Tap("t", 64 * 1024)
        for rid in ("a", "b"):
            tap.join(rid)
        batches = tap.batches()
        await tap.put("a", chunk(b"1"))
        await tap.put("b", chunk(b"2"))
        await tap.put("a", None)
        first = await anext(batches)
        await tap.put("b", chunk(b"3"))
        second = await anext(batches)
        return [[(p.key, p.end) for p in b.parts] for b in (first, second)]

    assert asyncio.run(main()) == [[("a", False), ("b", False), ("a", True)], [("b", False)]]


def test_a_request_waits_at_its_window_until_credited_and_a_closed_tap_ends_it() -> None:
    async def main() -> tuple[bool, bool, object]:
        tap = Tap("t", 0)  # the smallest window
        tap.join("a")
        await tap.put("a", chunk(b"x" * WINDOW_BYTES[0]))
        blocked = asyncio.ensure_future(tap.put("a", chunk(b"y")))
        await asyncio.sleep(0.01)
        held = not blocked.done()
        tap.credit("a", WINDOW_BYTES[0])
        await asyncio.wait_for(blocked, 1)
        tap.credit("a", 10**9)
        await tap.put("a", chunk(b"z" * WINDOW_BYTES[0]))
        waiting = asyncio.ensure_future(tap.put("a", chunk(b"w")))
        await asyncio.sleep(0.01)
        tap.close()  # the router's connection went
        failed = await asyncio.gather(waiting, return_exceptions=True)
        return held, blocked.done(), type(failed[0])

    assert asyncio.run(main()) == (True, True, TapClosed)


def test_an_outlet_sends_the_first_reply_on_the_call_marked_and_leaves_shared_heartbeats_alone() -> None:
    alive = pb.GenerateReply(heartbeat=pb.Heartbeat())

    async def main() -> tuple[pb.GenerateReply | None, pb.GenerateReply | None, list[pb.TapPart]]:
        tap = Tap("t", 64 * 1024)
        outlet = Outlet(tap, "a")
        first = await outlet.send(alive)
        second = await outlet.send(chunk(b"1"))
        await outlet.end()
        outlet.close()
        return first, second, list((await anext(tap.batches())).parts)

    first, second, parts = asyncio.run(main())
    assert first is not None and first.rest_on_tap and first.HasField("heartbeat") and not alive.rest_on_tap
    assert second is None and [p.end for p in parts] == [False, True]


def test_an_agent_keeps_a_bounded_number_of_taps() -> None:
    async def main() -> tuple[bool, bool]:
        taps = Taps()
        first = taps.open("t0", 0)
        for i in range(1, 9):
            taps.open(f"t{i}", 0)
        return first.closed, taps.get("t0") is None

    assert asyncio.run(main()) == (True, True)


def test_a_tap_reopened_under_its_id_replaces_the_old_one() -> None:
    async def main() -> tuple[bool, bool]:
        taps = Taps()
        old = taps.open("t", 0)
        new = taps.open("t", 0)  # the router's stream broke and it opened the tap again
        return old.closed, taps.get("t") is new and not new.closed

    assert asyncio.run(main()) == (True, True)


def test_windows_and_credits_count_the_size_the_agent_measured_once_or_the_routers_for_an_older_agent() -> None:
    async def main() -> tuple[int, int, list[int]]:
        tap = Tap("t", 64 * 1024)
        tap.join("a")
        reply = chunk(b"x" * 1000)
        await tap.put("a", reply)
        (part,) = (await anext(tap.batches())).parts
        inbox = TapClient(_Stub(grpc.StatusCode.OK), "w").join()
        assert inbox is not None
        inbox.put(part)
        older = pb.TapPart(key=part.key, reply=part.reply)  # an agent from before `size`
        inbox.put(older)
        sizes = [(await inbox.get())[1], (await inbox.get())[1]]
        return part.size, reply.ByteSize(), sizes

    size, measured, sizes = asyncio.run(main())
    assert size == measured and sizes == [measured, measured]


class _Stub:
    """A Tap that fails as an agent from before taps does; Credit calls noted."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code, self.credits = code, list[int]()

    def Tap(self, request: pb.TapRequest) -> Any:
        code = self.code

        class Call:
            def __aiter__(self) -> Any:
                return self

            async def __anext__(self) -> pb.TapBatch:
                raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "no")

            def cancel(self) -> None:
                pass

        return Call()

    async def Credit(self, request: pb.CreditRequest, **options: float) -> pb.CreditReply:
        self.credits.append(request.bytes)
        return pb.CreditReply()


def test_an_agent_without_taps_leaves_requests_on_their_calls_and_readers_of_a_broken_tap_learn_it() -> None:
    async def main() -> tuple[Inbox | None, Inbox | None, object]:
        tap = TapClient(_Stub(grpc.StatusCode.UNIMPLEMENTED), "w")
        before = tap.join()
        assert before is not None
        await tap.run()
        failed = await asyncio.gather(before.get(), return_exceptions=True)
        return before, tap.join(), failed[0]

    before, after, failed = asyncio.run(main())
    assert before is not None and after is None and isinstance(failed, TapBroken)


def test_an_inbox_gives_what_came_before_a_failure_and_sends_credits_as_they_gather() -> None:
    async def main() -> tuple[list[bytes], object, list[int]]:
        stub = _Stub(grpc.StatusCode.OK)
        inbox = TapClient(stub, "w").join()
        assert inbox is not None
        inbox.put(pb.TapPart(key="a", reply=chunk(b"1")))
        inbox.fail(TapBroken("gone"))
        got = [(await inbox.get())[0].reply.chunks.items[0]]
        failed = (await asyncio.gather(inbox.get(), return_exceptions=True))[0]
        inbox.credit(100)
        inbox.credit(50)  # before the first Credit went: the two go as one
        await asyncio.sleep(0.01)
        inbox.credit(30)
        await asyncio.sleep(0.01)
        return got, failed, stub.credits

    got, failed, credits = asyncio.run(main())
    assert got == [b"1"] and isinstance(failed, TapBroken) and credits == [150, 30]


class _Call:
    """A Generate call whose first reply says the rest comes on the tap, then nothing (a hung agent)."""

    def __init__(self) -> None:
        self.replies = [pb.GenerateReply(chunks=pb.Chunks(items=[b"first"]), rest_on_tap=True)]
        self.cancelled = False

    async def read(self) -> Any:
        if self.replies:
            return self.replies.pop(0)
        await asyncio.Event().wait()

    def cancel(self) -> None:
        self.cancelled = True


def test_a_tapped_request_that_hears_nothing_for_the_gap_is_silent() -> None:
    async def main() -> tuple[bytes, bytes, bool]:
        inbox = TapClient(_Stub(grpc.StatusCode.OK), "w").join()
        assert inbox is not None
        call = _Call()
        reads = Reads(call, "w", 0.2, inbox)
        first = await reads.read()
        inbox.put(pb.TapPart(key="a", reply=chunk(b"second")))
        second = await reads.read()
        with pytest.raises(_Silent):
            await reads.read()
        reads.close()
        return first.chunks.items[0], second.chunks.items[0], call.cancelled

    assert asyncio.run(main()) == (b"first", b"second", True)


class _EndedCall(_Call):
    """A tapped call that ended OK (its agent queued the rest on a tap that then broke)."""

    async def read(self) -> Any:
        if self.replies:
            return self.replies.pop(0)
        return grpc.aio.EOF


def test_a_tap_that_breaks_before_the_end_part_fails_the_stream_even_when_its_call_ended_well() -> None:
    async def main() -> type[BaseException] | None:
        inbox = TapClient(_Stub(grpc.StatusCode.OK), "w").join()
        assert inbox is not None
        reads = Reads(_EndedCall(), "w", 5.0, inbox)
        await reads.read()  # the first reply: the rest on the tap
        inbox.put(pb.TapPart(key=inbox.key, reply=chunk(b"second")))
        inbox.fail(TapBroken("the agent's tap ended"))  # the final and the end part never came
        await reads.read()
        try:
            await reads.read()
        except Exception as exc:
            return type(exc)
        finally:
            reads.close()
        return None

    assert asyncio.run(main()) is _TapCut


class _TapCall:
    """A Tap call the test feeds; cancelling it ends the iteration as gRPC's does."""

    def __init__(self) -> None:
        self.batches: asyncio.Queue[pb.TapBatch | None] = asyncio.Queue()
        self.cancelled = False

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> pb.TapBatch:
        batch = await self.batches.get()
        if batch is None:
            raise asyncio.CancelledError
        return batch

    def cancel(self) -> None:
        self.cancelled = True
        self.batches.put_nowait(None)


def test_a_retired_tap_takes_no_new_request_and_ends_once_those_on_it_ended() -> None:
    async def main() -> tuple[bool, bytes, bool, bool]:
        call = _TapCall()
        stub = _Stub(grpc.StatusCode.OK)
        stub.Tap = lambda request: call  # type: ignore[method-assign]
        tap = TapClient(stub, "w")
        running = asyncio.ensure_future(tap.run())
        inbox = tap.join()
        assert inbox is not None
        tap.retire()  # its channel was replaced (a certificate rotation)
        refused = tap.join() is None
        call.batches.put_nowait(pb.TapBatch(parts=[pb.TapPart(key=inbox.key, reply=chunk(b"still read"))]))
        got = (await inbox.get())[0].reply.chunks.items[0]
        await asyncio.sleep(0.01)
        alive = not running.done()
        inbox.close()  # the last request on it ended
        await asyncio.wait_for(running, 1)
        return refused, got, alive, call.cancelled

    assert asyncio.run(main()) == (True, b"still read", True, True)
