"""What the relay learns from engine chunks without changing them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

import pytest

from worker.relay import Tally, _worth_parsing, coalesced


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


async def _items(
    values: list[bytes], fail_at: int | None = None, closed: list[bool] | None = None
) -> AsyncGenerator[bytes, None]:
    try:
        for index, value in enumerate(values):
            if index == fail_at:
                raise RuntimeError("engine went away")
            yield value
    finally:
        if closed is not None:
            closed.append(True)


async def test_coalescing_keeps_order_and_batches_what_is_buffered() -> None:
    values = [str(i).encode() for i in range(200)]
    batches = [batch async for batch in coalesced(_items(values), max_batch=64)]
    assert [item for batch in batches for item in batch] == values
    assert len(batches) < len(values) and max(len(b) for b in batches) <= 64


async def test_coalescing_reraises_the_source_error_after_what_came_before() -> None:
    seen: list[bytes] = []
    with pytest.raises(RuntimeError, match="engine went away"):
        async for batch in coalesced(_items([b"a", b"b", b"c"], fail_at=2)):
            seen.extend(batch)
    assert seen == [b"a", b"b"]


async def test_closing_the_consumer_closes_the_source() -> None:
    closed: list[bool] = []
    stream = coalesced(_items([b"x"] * 10_000, closed=closed), buffer=8)
    first = await stream.__anext__()
    assert first
    await stream.aclose()
    await asyncio.sleep(0)
    assert closed == [True]
