"""A worker the router cannot reach says why (its row's detail), and the router logs each new reason once."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import grpc
import pytest

from cluster.pki import authority
from cluster.router import registry as registry_module
from cluster.router.operator import worker_row
from cluster.router.registry import Registry, WorkerHandle
from cluster.router.rows import Reachability
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.shared import tls


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


REFUSED = _error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: Connection refused")
HANDSHAKE = _error(grpc.StatusCode.UNAVAILABLE, "Custom verification check failed: Hostname Verification Check failed.")


class _Failing:
    """A stub whose calls fail as a worker that cannot be reached does: with `errors`, one per attempt, then the
    last again; `done` is set after `attempts` of them."""

    def __init__(self, errors: list[grpc.aio.AioRpcError], attempts: int) -> None:
        self.errors, self.attempts, self.done = errors, attempts, asyncio.Event()
        self.made = 0

    async def Info(self, request: pb.InfoRequest, **options: float) -> pb.InfoReply:
        self.made += 1
        if self.made >= self.attempts:
            self.done.set()
        raise self.errors[min(self.made, len(self.errors)) - 1]

    def Tap(self, request: pb.TapRequest) -> _FailingCall:
        return _FailingCall(self.errors[min(self.made, len(self.errors)) - 1])


class _FailingCall:
    """The tap's stream on a worker that cannot be reached: it fails as the worker's other calls do."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self.error = error

    def __aiter__(self) -> _FailingCall:
        return self

    async def __anext__(self) -> pb.TapBatch:
        raise self.error

    def cancel(self) -> None:
        pass


async def _follow_until_done(handle: WorkerHandle, stub: _Failing, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "RECONNECT_MIN_S", 0.001)
    monkeypatch.setattr(registry_module, "RECONNECT_MAX_S", 0.001)
    handle.stub = cast(pb_grpc.WorkerStub, stub)  # only Info (and the tap, failing alike) before a connection
    task = asyncio.create_task(Registry([])._follow(handle))
    await asyncio.wait_for(stub.done.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_worker_never_reached_keeps_the_code_and_details_of_why(monkeypatch: pytest.MonkeyPatch) -> None:
    handle = WorkerHandle("127.0.0.1:8201")
    await _follow_until_done(handle, _Failing([HANDSHAKE], attempts=3), monkeypatch)
    assert handle.last_error == "UNAVAILABLE: Custom verification check failed: Hostname Verification Check failed."
    assert not handle.connected


async def test_each_new_reason_is_logged_once_not_at_every_retry(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    handle = WorkerHandle("127.0.0.1:8201")
    with caplog.at_level(logging.WARNING, logger=registry_module.__name__):
        stub = _Failing([REFUSED, REFUSED, HANDSHAKE, HANDSHAKE, HANDSHAKE], attempts=20)
        await _follow_until_done(handle, stub, monkeypatch)
    assert [r.getMessage() for r in caplog.records] == [
        f"worker 127.0.0.1:8201 unreachable: UNAVAILABLE: {REFUSED.details()}",
        f"worker 127.0.0.1:8201 unreachable: UNAVAILABLE: {HANDSHAKE.details()}",
    ]


def test_a_reason_is_bounded() -> None:
    reason = registry_module.failure_reason(_error(grpc.StatusCode.UNAVAILABLE, "x" * 10_000))
    assert len(reason) == registry_module.REASON_CHARS and reason.startswith("UNAVAILABLE: xxx")


def test_an_unreachable_workers_row_says_why_and_a_connected_ones_says_what_the_agent_says() -> None:
    handle = WorkerHandle("127.0.0.1:8201", sample=pb.LoadSample(state_detail="loading weights"))
    handle.last_error = "UNAVAILABLE: Hostname Verification Check failed."
    row = worker_row(handle, time.monotonic())
    assert row.state is Reachability.UNREACHABLE
    assert row.detail == "UNAVAILABLE: Hostname Verification Check failed."
    assert row.state_text == "unreachable: UNAVAILABLE: Hostname Verification Check failed."
    handle.connected, handle.last_error, handle.sample_at = True, "", time.monotonic()
    assert worker_row(handle, time.monotonic()).detail == "loading weights"


async def test_an_agent_whose_certificate_names_another_host_is_unreachable_with_the_handshakes_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real TLS handshake in this process: the certificate names 10.9.9.9, the router dials 127.0.0.1."""
    now = authority.now_utc()
    ca = authority.create(now)
    authority.write_identity(tmp_path / "router", ca, authority.issue(ca, tls.ROUTER_NAME, (tls.ROUTER_NAME,), now))
    authority.write_identity(tmp_path / "agent", ca, authority.issue(ca, "h9", ("10.9.9.9:8201", "h9"), now))
    server = grpc.server(ThreadPoolExecutor(1))
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(tmp_path / "agent"))
    server.start()
    failed = asyncio.Event()
    note = registry_module._note_failure

    def noted(handle: WorkerHandle, exc: grpc.aio.AioRpcError) -> None:
        note(handle, exc)
        failed.set()

    monkeypatch.setattr(registry_module, "_note_failure", noted)
    registry = Registry([f"127.0.0.1:{port}"], tls_dir=tmp_path / "router")
    handle = registry.workers[f"127.0.0.1:{port}"]
    try:
        await registry.start()
        await asyncio.wait_for(failed.wait(), 10)
    finally:
        await registry.stop()
        server.stop(None)
    row = worker_row(handle, time.monotonic())
    assert row.state is Reachability.UNREACHABLE
    assert row.detail.startswith("UNAVAILABLE: ") and "Hostname Verification" in row.detail
