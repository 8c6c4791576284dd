"""Routing decisions on hand-made snapshots: hit, miss, imbalance, session expiry, a worker leaving, bounds."""

from __future__ import annotations

import pytest

from cluster.routing.choose import RequestView, RoutingState, WorkerView, choose
from cluster.routing.prefix_index import BLOCK_CHARS, PrefixIndex, WorkerPrefixes, block_hashes
from cluster.routing.sessions import SessionPins
from worker.shared.load import Load

SYSTEM_A = "You are a careful assistant for the orchard lab. " * 40  # ~2k chars: 7 full blocks
SYSTEM_B = "You answer questions about apple varieties only. " * 40


def workers(*loads: int, rates: tuple[float, ...] = (), decode: tuple[float, ...] = ()) -> list[WorkerView]:
    return [
        WorkerView(
            f"w{i}",
            ready=True,
            inflight=load,
            load=Load(
                prefill_tokens_per_s=rates[i] if rates else 0.0, decode_tokens_per_s=decode[i] if decode else 0.0
            ),
        )
        for i, load in enumerate(loads)
    ]


def request(prompt: str, session: str | None = None) -> RequestView:
    return RequestView("m", session=session, block_hashes=block_hashes(prompt), prompt_chars=len(prompt))


def test_block_hashes_are_chained_and_ignore_the_partial_tail() -> None:
    one = block_hashes(SYSTEM_A + "question one")
    two = block_hashes(SYSTEM_A + "a different question")
    assert one == two == block_hashes(SYSTEM_A)  # same complete blocks
    assert len(one) == len(SYSTEM_A) // BLOCK_CHARS
    other = block_hashes("x" + SYSTEM_A)
    assert not set(one) & set(other)  # a different first block changes every later hash


def test_prefix_hit_goes_to_the_worker_that_holds_the_prefix() -> None:
    state = RoutingState()
    state.prefixes.record("w2", block_hashes(SYSTEM_A))
    decision = choose("prefix", request(SYSTEM_A + "How do I prune?"), workers(0, 1, 2), state, now=0)
    assert decision is not None and (decision.worker_id, decision.reason) == ("w2", "prefix_hit")


def test_miss_goes_to_the_cheapest_worker_not_the_emptiest_tree() -> None:
    state = RoutingState()
    state.prefixes.record("w0", block_hashes(SYSTEM_B))  # w0 has a big tree, w1 an empty one
    decision = choose("prefix", request(SYSTEM_A), workers(0, 3), state, now=0)
    assert decision is not None and (decision.worker_id, decision.reason) == ("w0", "cost")


def test_cost_prefers_the_faster_worker_for_the_same_queue() -> None:
    decision = choose("prefix", request(SYSTEM_A), workers(1, 1, rates=(1000.0, 2000.0)), RoutingState(), now=0)
    assert decision is not None and decision.worker_id == "w1"


def test_cost_prefers_the_faster_decoder_even_with_a_longer_queue() -> None:
    # Same prefill speed; w1 decodes 4x faster, so its two requests ahead clear sooner than w0's one.
    fleet = workers(1, 2, rates=(1000.0, 1000.0), decode=(25.0, 100.0))
    decision = choose("prefix", request("short question"), fleet, RoutingState(), now=0)
    assert decision is not None and (decision.worker_id, decision.reason) == ("w1", "cost")
    same_speed = workers(1, 2, rates=(1000.0, 1000.0), decode=(50.0, 50.0))
    decision = choose("prefix", request("short question"), same_speed, RoutingState(), now=0)
    assert decision is not None and decision.worker_id == "w0"


def test_unmeasured_workers_count_as_the_fleet_median() -> None:
    # w1 has no measurement yet: it is costed at the median of the others (550 tok/s), which beats w0's
    # 500 and w2's 600 behind a queue. Were it costed at 0 or "infinitely fast" it would lose or always win.
    fleet = workers(0, 0, 5, rates=(500.0, 0.0, 600.0))
    decision = choose("prefix", request(SYSTEM_A), fleet, RoutingState(), now=0)
    assert decision is not None and (decision.worker_id, decision.reason) == ("w1", "cost")
    fleet = workers(0, 0, 0, rates=(500.0, 0.0, 600.0))
    decision = choose("prefix", request(SYSTEM_A), fleet, RoutingState(), now=0)
    assert decision is not None and decision.worker_id == "w2"


def test_imbalance_overrides_a_prefix_hit() -> None:
    state = RoutingState()
    state.prefixes.record("w0", block_hashes(SYSTEM_A))
    decision = choose("prefix", request(SYSTEM_A), workers(20, 1), state, now=0)
    assert decision is not None and (decision.worker_id, decision.reason) == ("w1", "imbalance")


def test_session_pin_wins_until_it_expires() -> None:
    state = RoutingState(sessions=SessionPins(ttl_s=300))
    state.sessions.pin("alice", "w1", now=0)
    pinned = choose("prefix", request("hi", session="alice"), workers(0, 3), state, now=100)
    assert pinned is not None and (pinned.worker_id, pinned.reason) == ("w1", "session")
    expired = choose("prefix", request("hi", session="alice"), workers(0, 3), state, now=401)
    assert expired is not None and expired.reason != "session" and expired.worker_id == "w0"


def test_a_pinned_worker_that_left_is_not_chosen() -> None:
    state = RoutingState()
    state.sessions.pin("bob", "gone", now=0)
    state.prefixes.record("gone", block_hashes(SYSTEM_A))
    decision = choose("prefix", request(SYSTEM_A, session="bob"), workers(0, 0), state, now=1)
    assert decision is not None and decision.worker_id in ("w0", "w1")


def test_not_ready_and_excluded_workers_are_never_chosen() -> None:
    views = [WorkerView("a", ready=False, inflight=0), WorkerView("b", ready=True, inflight=9)]
    for policy in ("prefix", "least_loaded", "round_robin"):
        decision = choose(policy, request("x"), views, RoutingState(), now=0)
        assert decision is not None and decision.worker_id == "b"
        assert choose(policy, request("x"), views, RoutingState(), now=0, exclude=frozenset({"b"})) is None


def test_round_robin_takes_turns() -> None:
    chosen = [choose("round_robin", request("x"), workers(5, 0, 0), RoutingState(turn=t), now=0) for t in range(6)]
    assert [d.worker_id for d in chosen if d] == ["w0", "w1", "w2", "w0", "w1", "w2"]


def test_unknown_policy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        choose("fastest", request("x"), workers(0), RoutingState(), now=0)


def test_prefix_lru_is_bounded_and_evicts_the_oldest() -> None:
    lru = WorkerPrefixes(capacity_blocks=3)
    lru.record([1, 2, 3])
    lru.record([4])
    assert len(lru) == 3 and lru.matched_blocks([1]) == 0 and lru.matched_blocks([2, 3, 4]) == 3


def test_a_worker_that_leaves_is_forgotten() -> None:
    index = PrefixIndex()
    index.record("w0", [1, 2])
    index.forget("w0")
    assert index.matched_blocks("w0", [1, 2]) == 0 and "w0" not in index._workers


def test_session_table_is_bounded() -> None:
    pins: SessionPins[str] = SessionPins(ttl_s=60, max_sessions=2)
    for name in ("a", "b", "c"):
        pins.pin(name, "w0", now=0)
    assert len(pins) == 2 and pins.get("a", now=1) is None and pins.get("c", now=1) == "w0"
