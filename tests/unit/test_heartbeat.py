"""Heartbeats while a source is silent, none while it talks; closing mid-wait leaves the source closable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from worker.heartbeat import once, with_heartbeats


async def _slow(gaps: list[float]) -> AsyncGenerator[str, None]:
    for index, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield f"item {index}"


def test_silence_longer_than_the_beat_gets_heartbeats_between_items() -> None:
    async def collect() -> list[str | None]:
        return [item async for item in with_heartbeats(_slow([0.0, 0.25, 0.0]), every_s=0.1)]

    got = asyncio.run(collect())
    assert got[0] == "item 0" and got[-2:] == ["item 1", "item 2"]
    assert got[1:-2] == [None] * len(got[1:-2]) and 2 <= len(got[1:-2]) <= 3


def test_closing_while_waiting_lets_the_owner_close_the_source() -> None:
    async def scenario() -> bool:
        source = _slow([10.0])
        beating = with_heartbeats(source, every_s=0.05)
        assert await anext(beating) is None  # waiting on the source
        await beating.aclose()
        await source.aclose()  # would raise "already running" if the read were still in it
        return True

    assert asyncio.run(scenario())


def test_a_whole_answer_passes_through_once() -> None:
    async def whole() -> bytes:
        await asyncio.sleep(0.15)
        return b"{}"

    async def collect() -> list[bytes | None]:
        return [item async for item in with_heartbeats(once(whole()), every_s=0.1)]

    assert asyncio.run(collect()) == [None, b"{}"]


def test_no_period_no_heartbeats() -> None:
    """A router from before heartbeats asks for none: it would take one for the answer."""

    async def collect() -> list[str | None]:
        return [item async for item in with_heartbeats(_slow([0.0, 0.2]), every_s=None)]

    assert asyncio.run(collect()) == ["item 0", "item 1"]
