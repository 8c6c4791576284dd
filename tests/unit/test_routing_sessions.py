"""Session pins and balance (issue 27): a worker that comes back gets its share of pinned sessions again, while
sessions keep their worker as long as the load is balanced."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest

from cluster.routing.choose import Decision, RequestView, RoutingState, WorkerView, choose
from cluster.routing.prefix import DEFAULTS
from cluster.routing.prefix_index import block_hashes

HISTORY = "Earlier turns of this conversation, resent with every request. " * 20  # ~1.3k chars: 5 blocks


@dataclass
class ClosedLoop:
    """Sessions over the prefix policy, one request in flight each: the oldest request finishes first and its
    session (or a new one in its place) sends the next. Pins and prefixes are recorded as the router does."""

    worker_ids: tuple[str, ...]
    down: set[str] = field(default_factory=set)
    state: RoutingState = field(default_factory=RoutingState)
    in_flight: deque[tuple[str, str]] = field(default_factory=deque)  # (session, worker), oldest first
    now: float = 0.0

    def load(self, worker_id: str) -> int:
        return sum(1 for _, worker in self.in_flight if worker == worker_id)

    def send(self, session: str) -> Decision:
        views = [WorkerView(w, ready=w not in self.down, inflight=self.load(w)) for w in self.worker_ids]
        prompt = f"<{session}>" + HISTORY  # each conversation its own prefix
        request = RequestView("m", session=session, block_hashes=block_hashes(prompt), prompt_chars=len(prompt))
        decision = choose("prefix", request, views, self.state, self.now)
        assert decision is not None
        self.state.prefixes.record(decision.worker_id, request.block_hashes)
        self.state.sessions.pin(session, decision.worker_id, self.now)
        self.in_flight.append((session, decision.worker_id))
        self.now += 0.01
        return decision

    def next_request(self, new_session: str | None = None) -> tuple[str, str, Decision]:
        """The oldest request ends; its session (or `new_session`) sends again. (session, its last worker, decision)."""
        session, last = self.in_flight.popleft()
        session = new_session or session
        return session, last, self.send(session)

    def balanced(self) -> bool:
        """The prefix policy's balance rule: no worker has both `imbalance_abs` more in flight than the least
        loaded one and `imbalance_rel` times as many."""
        loads = [self.load(w) for w in self.worker_ids if w not in self.down]
        high, low = max(loads), min(loads)
        return high - low <= DEFAULTS.imbalance_abs or high <= DEFAULTS.imbalance_rel * max(low, 1)


@pytest.mark.parametrize(
    ("worker_ids", "sessions"),
    [(("w0", "w1"), 32), (("w0", "w1", "w2"), 48), (("w0", "w1", "w2"), 96)],
    ids=["2 workers, 32 sessions", "3 workers, 48 sessions", "3 workers, 96 sessions"],
)
def test_a_worker_that_returns_gets_its_share_of_pinned_sessions(worker_ids: tuple[str, ...], sessions: int) -> None:
    """All sessions are pinned while one worker is away; once it is back, pins on much busier workers move to it
    until the load is balanced (one request per session at most), and from then on every session stays put."""
    returning = worker_ids[-1]
    loop = ClosedLoop(worker_ids, down={returning})
    for s in range(sessions):  # every session pinned while the worker is away (SIGSTOP)
        loop.send(f"s{s}")
    loop.down.clear()  # it is back, empty
    assert loop.load(returning) == 0 and not loop.balanced()

    churn = 8  # every 8th request comes from a new session in place of one that ended
    for step in range(sessions):  # within one request per session, the load is balanced again
        loop.next_request(f"new{step}" if step % churn == 0 else None)
    assert loop.balanced()

    served, moved = 0, 0
    for step in range(sessions):  # the next round: a fair share, and sessions keep their worker
        new = f"later{step}" if step % churn == 0 else None
        _, last, decision = loop.next_request(new)
        served += decision.worker_id == returning
        moved += new is None and decision.worker_id != last
    fair = sessions / len(worker_ids)
    assert served >= 0.75 * fair, f"{returning} served {served} of {sessions} requests"
    assert moved == 0


@pytest.mark.parametrize(
    ("pinned_load", "other_loads", "kept"),
    [
        (5, (0, 3), True),  # a few more in flight than the least loaded: affinity wins
        (20, (14, 16), True),
        (30, (20,), True),  # 10 more, but not 1.5 times as many
        (0, (20, 12), True),  # the fleet is imbalanced, but the pinned worker is the least loaded
        (12, (2,), False),  # 10 more and 6 times as many: the session moves to the least loaded
        (31, (20, 25), False),
        (24, (0, 24), False),  # a worker that came back empty
    ],
)
def test_a_pin_holds_only_while_its_worker_is_not_much_more_loaded(
    pinned_load: int, other_loads: tuple[int, ...], kept: bool
) -> None:
    state = RoutingState()
    state.sessions.pin("alice", "pinned", now=0)
    views = [WorkerView("pinned", ready=True, inflight=pinned_load)]
    views += [WorkerView(f"w{i}", ready=True, inflight=load) for i, load in enumerate(other_loads)]
    decision = choose("prefix", RequestView("m", session="alice"), views, state, now=1)
    assert decision is not None
    if kept:
        assert (decision.worker_id, decision.reason) == ("pinned", "session")
    else:
        least = min(views, key=lambda w: (w.busy, w.worker_id)).worker_id
        assert (decision.worker_id, decision.reason) == (least, "imbalance")
