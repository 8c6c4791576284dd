"""The per-worker circuit breaker's state machine, with time passed in."""

from __future__ import annotations

from cluster.router.breaker import COOL_DOWN_S, FAILURES_TO_OPEN, Breaker, BreakerState


def opened(now: float = 0.0) -> Breaker:
    breaker = Breaker()
    for _ in range(FAILURES_TO_OPEN):
        breaker.on_attempt(now)
        breaker.on_failure(now)
    return breaker


def test_one_failure_is_tolerated_consecutive_ones_open_it() -> None:
    breaker = Breaker()
    breaker.on_failure(0)
    assert breaker.state(0) is BreakerState.CLOSED and breaker.allows(0)
    breaker.on_success()
    breaker.on_failure(1)  # not consecutive with the first
    assert breaker.allows(1)
    assert opened().state(0) is BreakerState.OPEN and not opened().allows(COOL_DOWN_S / 2)


def test_after_the_cool_down_one_probe_goes_and_its_success_closes_it() -> None:
    breaker = opened()
    assert breaker.state(COOL_DOWN_S) is BreakerState.HALF_OPEN and breaker.allows(COOL_DOWN_S)
    breaker.on_attempt(COOL_DOWN_S)
    assert not breaker.allows(COOL_DOWN_S)  # the probe is in flight: nobody else
    breaker.on_success()
    assert breaker.state(COOL_DOWN_S) is BreakerState.CLOSED and breaker.failures == 0


def test_a_failed_probe_opens_it_for_twice_as_long() -> None:
    breaker = opened()
    breaker.on_attempt(COOL_DOWN_S)
    breaker.on_failure(COOL_DOWN_S)
    assert breaker.state(COOL_DOWN_S * 2.5) is BreakerState.OPEN
    assert breaker.state(COOL_DOWN_S * 3) is BreakerState.HALF_OPEN
    assert [s.gauge for s in BreakerState] == [0, 2, 1]


def test_a_reconnected_agent_starts_closed() -> None:
    breaker = opened()
    breaker.on_reconnect()
    assert breaker.state(0) is BreakerState.CLOSED and breaker.allows(0)


def test_an_abandoned_probe_lets_the_next_one_go() -> None:
    breaker = opened()
    breaker.on_attempt(COOL_DOWN_S)
    breaker.on_abandoned()  # the client left mid-probe: no verdict on the worker
    assert breaker.state(COOL_DOWN_S) is BreakerState.HALF_OPEN and breaker.allows(COOL_DOWN_S)
