"""One engine scrape per interval, however many watch: the shared result and the agent's Watch on it."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from proto import orchard_pb2 as pb
from worker.hostinfo import HostFacts
from worker.service import ServiceIdentity, WorkerService
from worker.shared.enginemetrics import EngineLoad
from worker.shared.states import EngineState
from worker.singleflight import SingleFlight


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_callers_at_the_same_moment_share_one_run() -> None:
    runs = 0

    async def produce() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        return runs

    async def main() -> list[int]:
        shared = SingleFlight(produce)
        return list(await asyncio.gather(*(shared.get(0.0) for _ in range(5))))

    assert asyncio.run(main()) == [1, 1, 1, 1, 1]


def test_a_result_is_reused_while_its_age_is_accepted_then_measured_again() -> None:
    clock, runs = Clock(), 0

    async def produce() -> int:
        nonlocal runs
        runs += 1
        return runs

    async def main() -> list[int]:
        shared = SingleFlight(produce, clock)
        seen = [await shared.get(0.5)]
        clock.now += 0.4
        seen.append(await shared.get(0.5))  # 0.4 s old: reused
        seen.append(await shared.get(0.2))  # too old for this caller: measured again
        clock.now += 0.6
        seen.append(await shared.get(0.5))
        return seen

    assert asyncio.run(main()) == [1, 1, 2, 3]


def test_a_failed_run_reaches_every_waiter_and_is_not_kept() -> None:
    calls = 0

    async def produce() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise httpx.ConnectError("engine gone")
        return "figures"

    async def main() -> tuple[list[object], str]:
        shared = SingleFlight(produce)
        failed = await asyncio.gather(shared.get(10.0), shared.get(10.0), return_exceptions=True)
        return list(failed), await shared.get(10.0)

    failed, then = asyncio.run(main())
    assert [type(f) for f in failed] == [httpx.ConnectError, httpx.ConnectError]
    assert then == "figures" and calls == 2


def test_a_waiter_cancelled_leaves_the_run_to_the_others() -> None:
    release = asyncio.Event()

    async def produce() -> str:
        await release.wait()
        return "figures"

    async def main() -> str:
        shared = SingleFlight(produce)
        first = asyncio.ensure_future(shared.get(0.0))
        second = asyncio.ensure_future(shared.get(0.0))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert asyncio.run(main()) == "figures"


def test_a_slow_run_holds_a_caller_only_as_long_as_it_allows_then_the_last_result_stands_in() -> None:
    clock, release, runs = Clock(), asyncio.Event(), 0

    async def produce() -> int:
        nonlocal runs
        runs += 1
        if runs > 1:
            await release.wait()  # the engine answers /metrics late
        return runs

    async def main() -> list[int]:
        shared = SingleFlight(produce, clock)
        seen = [await shared.get(0.5, wait_s=0.05)]  # the first result is always waited for
        clock.now += 1.0
        seen.append(await shared.get(0.5, wait_s=0.05))  # slow: the last result, the run goes on
        seen.append(await shared.get(0.5, wait_s=0.05))  # the same run, not a second one
        release.set()
        await asyncio.sleep(0.01)
        seen.append(await shared.get(0.5, wait_s=0.05))  # it ended: its result, no new run
        return seen

    assert asyncio.run(main()) == [1, 1, 1, 2] and runs == 2


class Supervisor(SimpleNamespace):
    """The parts of EngineSupervisor a load sample reads; counts its /metrics scrapes."""

    def __init__(self) -> None:
        super().__init__(
            state=EngineState.READY, ready=True, restarts=0, crashes=0, detail="", health_failures=0, scrapes=0
        )
        self.answer_after_s = 0.0
        self.adapter = SimpleNamespace(metrics_path="/metrics")

    async def stats(self) -> EngineLoad:
        await asyncio.sleep(self.answer_after_s)
        self.scrapes += 1
        return EngineLoad(running=2, generation_tokens=100 * self.scrapes)


def test_two_routers_watching_an_agent_cost_its_engine_one_scrape_per_interval() -> None:
    supervisor = Supervisor()
    identity = ServiceIdentity("w1", (pb.ModelInfo(name="m"),), 4, "sim", "test")
    host = HostFacts("h", "Linux", "x86", 1 << 30)

    async def watch(service: WorkerService, samples: int) -> list[pb.LoadSample]:
        stream = cast(Any, service.Watch(pb.WatchRequest(interval_seconds=0.2), cast(Any, None)))
        return [await anext(stream) for _ in range(samples)]

    async def main() -> tuple[list[pb.LoadSample], list[pb.LoadSample]]:
        async with httpx.AsyncClient() as http:
            service = WorkerService(cast(Any, supervisor), identity, host, http)
            a, b = await asyncio.gather(watch(service, 6), watch(service, 6))
            return a, b

    a, b = asyncio.run(main())
    assert supervisor.scrapes == 6  # not 12
    assert [s.load.generation_tokens for s in a] == [s.load.generation_tokens for s in b]
    assert all(s.load.running == 2 and s.state == pb.ENGINE_STATE_READY for s in a + b)


def test_an_engine_slow_to_answer_metrics_does_not_make_the_agents_samples_late() -> None:
    supervisor = Supervisor()
    identity = ServiceIdentity("w1", (pb.ModelInfo(name="m"),), 4, "sim", "test")
    host = HostFacts("h", "Linux", "x86", 1 << 30)

    async def main() -> tuple[float, list[pb.LoadSample]]:
        async with httpx.AsyncClient() as http:
            service = WorkerService(cast(Any, supervisor), identity, host, http)
            stream = cast(Any, service.Watch(pb.WatchRequest(interval_seconds=0.2), cast(Any, None)))
            first = await anext(stream)  # measured
            supervisor.answer_after_s = 5.0  # a busy engine, up to the scrape's own timeout
            started = time.monotonic()
            later = [await anext(stream) for _ in range(4)]
            return time.monotonic() - started, [first, *later]

    took, samples = asyncio.run(main())
    assert took < 2.0  # four samples at 0.2 s, each held at most 0.1 s by the scrape: not 5 s each
    assert {s.load.generation_tokens for s in samples} == {100}  # the last figures stand in
