"""A request's end record (app._End): a streamed answer whose client left before its body started has its
Generate call stopped and its end recorded on the event loop that owns them (not in a worker thread); a row's
duration counts from where its TTFT does."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any, cast

from cluster.gateway.gateway import Ask, Gateway
from cluster.gateway.queue import Capacity
from cluster.gateway.usage import UsageRow
from cluster.router.app import _End, _Pipeline
from cluster.router.forwarding import CLIENT_CLOSED, Ended, Forwarder, Started
from cluster.router.intake import Incoming
from cluster.router.metrics import RouterMetrics
from cluster.router.registry import Registry
from proto import orchard_pb2 as pb
from worker.shared.launch import RouterConfig


class _Call:
    def __init__(self, threads: list[str]) -> None:
        self.threads = threads

    def cancel(self) -> None:
        self.threads.append(threading.current_thread().name)


class _Reads:
    def close(self) -> None:
        pass


class _Forwarder:
    """Starts every request on worker `w`; its relay would send one event."""

    def __init__(self, started: Started) -> None:
        self.started = started

    async def start(self, incoming: Incoming, timeout_s: float) -> Started:
        return self.started

    async def relay(self, started: Started, incoming: Incoming, on_end: Any, outlet: Any = None) -> Any:
        yield b"data: {}\n\n"


def test_a_client_gone_before_its_stream_began_has_its_call_stopped_and_its_end_recorded_on_the_loop() -> None:
    async def main() -> tuple[list[str], list[int], bool]:
        threads: list[str] = []
        handle = SimpleNamespace(worker_id="w", ttft=SimpleNamespace(add=lambda *_: None))
        started = Started(cast(Any, handle), _Call(threads), cast(Any, _Reads()), pb.GenerateReply())
        gateway = Gateway(None, lambda model: Capacity(slots=1), require_auth=False)
        rows: list[UsageRow] = []
        config = RouterConfig(workers=("127.0.0.1:1",))
        forwarder = cast(Forwarder, _Forwarder(started))
        pipeline = _Pipeline(Registry([]), config, RouterMetrics(), forwarder, gateway, rows.append)
        end = _End(gateway, rows.append, "r1")
        end.granted = await gateway.admit(Ask("r1", "m", 10, 5), None, 1.0)
        response = await pipeline._forward(cast(Incoming, SimpleNamespace(stream=True)), end)

        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}  # the client has gone

        async def send(message: dict[str, Any]) -> None:
            await asyncio.sleep(0)

        await response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)
        again = await asyncio.wait_for(gateway.admit(Ask("r2", "m", 10, 5), None, 1.0), 1.0)  # its slot is free
        return threads, [row.status for row in rows], again is not None

    threads, statuses, admitted = asyncio.run(main())
    assert threads == [threading.main_thread().name] and statuses == [CLIENT_CLOSED] and admitted


def test_a_rows_duration_counts_from_where_its_ttft_does_whatever_the_gateways_clock() -> None:
    async def main() -> UsageRow:
        gateway = Gateway(None, lambda model: Capacity(slots=1), require_auth=False, clock=lambda: 1000.0)
        rows: list[UsageRow] = []
        end = _End(gateway, rows.append, "r1")
        end.granted = await gateway.admit(Ask("r1", "m", 10, 5), None, 1.0)
        await asyncio.sleep(0.01)
        end.first_byte = time.monotonic()  # a whole answer: its first byte is its end
        end(Ended(200, "w", pb.Usage(prompt_tokens=3, completion_tokens=1), counted=True))
        return rows[0]

    row = asyncio.run(main())
    assert row.ttft_s is not None and row.ttft_s >= 0.01 and row.duration_s >= row.ttft_s
