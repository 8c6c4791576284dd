"""A streamed answer's end when the client leaves before its body starts: the response's background stops the
Generate call and records the request's end, on the event loop that owns them (not in a worker thread)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any, cast

from cluster.gateway.gateway import Ask, Gateway
from cluster.gateway.queue import Capacity
from cluster.gateway.usage import UsageRow
from cluster.router.app import _End, _Pipeline
from cluster.router.forwarding import CLIENT_CLOSED, Forwarder, Started
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

    async def relay(self, started: Started, incoming: Incoming, on_end: Any) -> Any:
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
