"""What the relay learns from engine chunks without changing them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from worker.relay import (
    EngineError,
    ReadAhead,
    SseSplitter,
    Tally,
    _observe,
    _running_count,
    _worth_parsing,
    settle_stream_options,
    stream_batches,
)


def test_plain_delta_chunks_skip_parsing_but_usage_and_finish_do_not() -> None:
    delta = json.dumps({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}).encode()
    finish = json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode()
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
    assert not _worth_parsing(delta)
    assert _worth_parsing(finish) and _worth_parsing(usage)
    assert _worth_parsing(finish.replace(b'": "', b'":"'))  # compact JSON too


def test_tally_keeps_last_usage_and_finish_reason() -> None:
    tally = Tally()
    tally.observe({"choices": [{"index": 0, "text": "a", "finish_reason": None}]})
    tally.observe({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
    tally.observe({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    assert tally.tokens_seen and tally.finish_reason == "length" and tally.usage["total_tokens"] == 5


def test_sse_splitter_keeps_events_whole_across_reads() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b'data: {"a": 1}\n\ndata: {"b"') == ([("", b'{"a": 1}')], False)
    assert splitter.feed(b": 2}\n\n") == ([("", b'{"b": 2}')], False)  # the event completed by this read
    assert splitter.feed(b"") == ([], False)


def test_sse_splitter_batches_a_read_keeps_event_names_ignores_comments_and_stops_at_done() -> None:
    splitter = SseSplitter()
    read = b": keep-alive\r\n\r\ndata: one\r\n\r\nevent: x\ndata: two\n\ndata: [DONE]\n\ndata: late\n\n"
    assert splitter.feed(read) == ([("", b"one"), ("x", b"two")], True)


def test_sse_splitter_reads_anthropic_named_events_to_the_end_of_the_body() -> None:
    splitter = SseSplitter()
    read = b'event: message_start\ndata: {"type":"message_start"}\n\n' + b"event: message_stop\ndata: {}\n\n"
    assert splitter.feed(read) == ([("message_start", b'{"type":"message_start"}'), ("message_stop", b"{}")], False)


def test_sse_splitter_refuses_an_endless_event() -> None:
    splitter = SseSplitter(max_pending=1024)
    with pytest.raises(EngineError):
        splitter.feed(b"data: " + b"x" * 2048)


async def test_stream_batches_sends_every_event_in_order_and_learns_the_usage() -> None:
    reads = [
        b'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata: {"choices": [{"delta": {"content": "b"}}]}\n\n',
        b'data: {"choices": [], "usage": {"total_tokens": 5}}\n\ndata: [DONE]\n\n',
    ]

    async def body() -> AsyncIterator[bytes]:
        for read in reads:
            yield read

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body()))
    tally = Tally()
    async with httpx.AsyncClient(transport=transport) as client:
        batches = [b async for b in stream_batches(client, "http://engine/v1/completions", b"{}", tally)]
    events = [payload for batch in batches for _, payload in batch]  # grouped as they were read ahead
    assert len(events) == 3 and json.loads(events[1]) == {"choices": [{"delta": {"content": "b"}}]}
    assert tally.tokens_seen and tally.usage == {"total_tokens": 5}


async def test_stream_batches_turns_an_engine_error_into_engine_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(400, json={"error": {"message": "bad"}}))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(EngineError) as caught:
            async for _ in stream_batches(client, "http://engine/v1/completions", b"{}", Tally()):
                pass
    assert caught.value.status == 400 and b"bad" in caught.value.body


async def test_running_counts_are_read_and_taken_out_of_the_chunks_the_client_did_not_ask_for() -> None:
    reads = [
        b'data: {"choices":[{"delta":{"content":"\xc3\xa9"}}],"usage":{"prompt_tokens":7,"completion_tokens":1}}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\ndata: [DONE]\n\n',
    ]

    taken = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield reads[0]
        await taken.wait()  # the second read comes after the first was forwarded: two batches
        yield reads[1]

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body()))
    tally = Tally(strip_running=True)
    seen = []
    async with httpx.AsyncClient(transport=transport) as client:
        async for batch in stream_batches(client, "http://engine/v1/chat/completions", b"{}", tally):
            seen.append((batch, dict(tally.usage)))
            taken.set()
    (first, running), (last, final) = seen
    assert first == [("", '{"choices":[{"delta":{"content":"é"}}]}'.encode())]  # count gone, text intact
    assert running == {"prompt_tokens": 7, "completion_tokens": 1}  # but read on the way
    assert json.loads(last[0][1])["usage"] == final == {"prompt_tokens": 7, "completion_tokens": 2}  # final stays


RUNNING_CHUNKS = [  # as vLLM writes them (compact), as the sim does (spaced, its send stamp after the count)
    b'{"id":"c","choices":[{"index":0,"delta":{"content":" Paris"},"finish_reason":null}],'
    b'"usage":{"prompt_tokens":9,"total_tokens":11,"completion_tokens":2}}',
    b'{"id": "c", "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}], '
    b'"usage": {"prompt_tokens": 9, "completion_tokens": 3}, "orchard_sent_ns": 17}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":",\\"usage\\":{}"},"finish_reason":null}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":4}}',  # text that reads like a count, escaped as text is
    b'{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,'
    b'"completion_tokens":5}}',
    b'{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14}}',
]


@pytest.mark.parametrize("strip", [True, False])
def test_running_counts_read_without_parsing_the_chunk_give_what_parsing_gives(strip: bool) -> None:
    fast, slow = Tally(running=True, strip_running=strip), Tally(strip_running=strip)  # slow: parsed whole
    for chunk in RUNNING_CHUNKS:
        kept, parsed = _observe(chunk, fast), _observe(chunk, slow)
        assert kept is not None and parsed is not None and json.loads(kept) == json.loads(parsed)
        assert fast.usage == slow.usage and fast.finish_reason == slow.finish_reason
        assert (b'"usage"' in kept) == (not strip or not json.loads(chunk)["choices"])
    assert fast.usage["completion_tokens"] == 5 and fast.finish_reason == "stop"
    assert _observe(RUNNING_CHUNKS[0], Tally(running=True)) == RUNNING_CHUNKS[0]  # asked for: the engine's bytes
    unparsed = [_running_count(chunk, Tally(running=True)) is not None for chunk in RUNNING_CHUNKS]
    assert unparsed == [True, True, True, False, False]  # the deltas; a finish reason and the final are parsed


def test_stream_options_are_settled_once_and_kept_where_the_client_asked_too() -> None:
    plain: dict[str, object] = {"stream": True}
    assert settle_stream_options(plain, running=True) == (True, True)  # ours: both taken out again
    assert plain["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    theirs: dict[str, object] = {"stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    assert settle_stream_options(theirs, running=True) == (False, False)
    final_only: dict[str, object] = {"stream_options": {"include_usage": True}}
    assert settle_stream_options(final_only, running=True) == (True, False)
    mlx: dict[str, object] = {"stream": True}  # no running counts from this engine: usage at the end only
    assert settle_stream_options(mlx, running=False) == (False, True)
    assert mlx["stream_options"] == {"include_usage": True}


async def test_the_usage_chunk_the_client_did_not_ask_for_is_read_then_dropped() -> None:
    reads = [
        b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choices":[],"usage":{"completion_tokens":1}}\n\ndata: [DONE]\n\n'
    ]

    async def body() -> AsyncIterator[bytes]:
        for read in reads:
            yield read

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body()))
    for strip, expected in ((True, 1), (False, 2)):
        tally, items = Tally(strip_final=strip), []
        async with httpx.AsyncClient(transport=transport) as client:
            async for batch in stream_batches(client, "http://engine/v1/completions", b"{}", tally):
                items += batch
        assert len(items) == expected and tally.usage == {"completion_tokens": 1}


async def _settle() -> None:
    for _ in range(5):  # let the reader task run its ready steps
        await asyncio.sleep(0)


async def test_read_ahead_gives_a_lone_piece_at_once_and_what_arrived_meanwhile_as_one() -> None:
    gate, closed = asyncio.Event(), []

    async def source() -> AsyncIterator[bytes]:
        try:
            yield b"a"
            await gate.wait()
            yield b"b"
            yield b"c"
        finally:
            closed.append(True)

    async with ReadAhead(source()) as ahead:
        assert await ahead.take() == b"a"  # nothing else came: it leaves alone, without waiting for more
        gate.set()
        await _settle()  # the consumer was busy meanwhile
        assert await ahead.take() == b"bc"
        assert await ahead.take() is None
    assert closed == [True]


async def test_read_ahead_stops_reading_past_its_bound_until_taken() -> None:
    async def source() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 400_000

    async with ReadAhead(source(), max_bytes=1_000_000) as ahead:
        await _settle()
        assert ahead.size == 1_200_000  # three pieces: the third crossed the bound, the reader waits
        assert len(await ahead.take()) == 1_200_000
        await _settle()
        assert ahead.size == 1_200_000


async def test_read_ahead_hands_over_what_came_then_the_error_and_cancels_its_read_on_exit() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"a"
        raise httpx.ReadError("engine gone")

    async with ReadAhead(failing()) as ahead:
        await _settle()
        assert await ahead.take() == b"a"
        with pytest.raises(httpx.ReadError, match="engine gone"):
            await ahead.take()

    closed = []

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                await asyncio.sleep(3600)
                yield b""
        finally:
            closed.append(True)

    async with ReadAhead(endless()) as ahead:
        await _settle()
    assert closed == [True] and ahead.reader.cancelled()


async def test_a_consumer_cancelled_while_waiting_ends_cancelled_and_its_read_with_it() -> None:
    closed = []

    async def silent() -> AsyncIterator[bytes]:
        try:
            await asyncio.sleep(3600)
            yield b""
        finally:
            closed.append(True)

    async def consume() -> None:
        async with ReadAhead(silent()) as ahead:
            await ahead.take()

    task = asyncio.create_task(consume())
    await _settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]


async def test_a_read_stopped_from_outside_is_a_cut_stream_not_its_end() -> None:
    async def silent() -> AsyncIterator[bytes]:
        await asyncio.sleep(3600)
        yield b""

    async with ReadAhead(silent()) as ahead:
        await _settle()
        ahead.reader.cancel()
        with pytest.raises(httpx.ReadError, match="stopped"):
            await ahead.take()


async def test_chunks_that_came_in_one_network_read_leave_as_one_batch() -> None:
    """A real chunked HTTP body over TCP: httpx hands over one HTTP chunk at a time, the relay must not."""
    more = asyncio.Event()

    def chunk(event: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(event), event)

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)  # the body: b"{}"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(chunk(b'data: {"n": 1}\n\n'))
        await writer.drain()
        await more.wait()  # the relay is busy forwarding the first: the next three come in one write
        writer.write(b"".join(chunk(b'data: {"n": %d}\n\n' % n) for n in (2, 3, 4)) + chunk(b"data: [DONE]\n\n"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(engine, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    batches = []
    async with server, httpx.AsyncClient() as client:
        async for batch in stream_batches(client, f"http://127.0.0.1:{port}/v1/completions", b"{}", Tally()):
            batches.append([payload for _, payload in batch])
            more.set()
    assert batches == [[b'{"n": 1}'], [b'{"n": 2}', b'{"n": 3}', b'{"n": 4}']]
