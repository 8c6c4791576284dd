"""Models that follow demand: the pure decisions (cluster/placement/demand.py) as tables."""

from __future__ import annotations

import pytest

from cluster.placement.demand import (
    DOWN_AFTER_S,
    UP_AFTER_S,
    UP_QUEUE,
    Engine,
    Host,
    Lab,
    Load,
    Offer,
    Refuse,
    Trend,
    Unload,
    below_minimum,
    cold_start,
    expired,
    observe,
    scale,
)

OFFERS = {
    "coder": Offer("coder", 40, keep_alive_s=300),
    "chat": Offer("chat", 20, keep_alive_s=60, min_replicas=1, max_replicas=3),
    "embed": Offer("embed", 2),
    "huge": Offer("huge", 200),
    "only-s2": Offer("only-s2", 10, hosts=("s2",)),
}


def lab(*hosts: Host, waiting: dict[str, int] | None = None, now: float = 1000.0) -> Lab:
    return Lab(now, hosts, OFFERS, waiting or {})


@pytest.mark.parametrize(
    ("hosts", "model", "expected"),
    [
        # room on both: the tighter host, the big one stays free for big models
        ((Host("s1", 140), Host("s2", 50)), "coder", Load("coder", "s2", why="50 GB free on s2")),
        # a load already under way: the request waits for it, no second load
        ((Host("s1", 140, (Engine("coder", 40, state="loading"),)),), "coder", None),
        # no room anywhere: the least recently used idle engine goes
        (
            (
                Host(
                    "s1",
                    60,
                    (
                        Engine("chat", 20, last_used=900),
                        Engine("embed", 2, last_used=100),
                        Engine("x", 30, last_used=50),
                    ),
                ),
            ),
            "coder",
            Load("coder", "s1", ("x", "embed"), why="evicting x, embed (least recently used) on s1"),
        ),
        # the host needing fewer evictions wins over the one whose engines are older
        (
            (
                Host("s1", 50, (Engine("a", 20, last_used=10), Engine("b", 20, last_used=20))),
                Host("s2", 50, (Engine("c", 45, last_used=500),)),
            ),
            "coder",
            Load("coder", "s2", ("c",), why="evicting c (least recently used) on s2"),
        ),
        # in flight: not evicted now; the request waits for it to go idle
        ((Host("s1", 70, (Engine("p", 30, pinned=True), Engine("busy", 25, inflight=1))),), "coder", None),
        # pinned: never evicted, so never room
        (
            (Host("s1", 60, (Engine("p", 30, pinned=True), Engine("idle", 25))),),
            "coder",
            Refuse(
                "coder",
                "model 'coder' needs 40 GB; beside their pinned models the hosts it may load on hold 30 GB at most",
            ),
        ),
        (
            (Host("s1", 140), Host("s2", 96)),
            "huge",
            Refuse("huge", "model 'huge' needs 200 GB; the largest host it may load on holds 140 GB"),
        ),
        (
            (Host("s1", 140), Host("s2", 50, reachable=False)),
            "only-s2",
            Refuse("only-s2", "model 'only-s2' has no reachable host it may load on"),
        ),
    ],
)
def test_a_cold_request_loads_one_engine_where_it_fits(hosts: tuple[Host, ...], model: str, expected: object) -> None:
    assert cold_start(lab(*hosts), model) == expected


def test_an_engine_with_requests_waiting_for_it_is_not_evicted() -> None:
    full = Host(
        "s1", 50, (Engine("chat", 20, last_used=1), Engine("embed", 2, last_used=2), Engine("x", 28, last_used=3))
    )
    assert cold_start(lab(full, waiting={"chat": 3}), "coder") is None  # it waits until chat's queue is served
    assert cold_start(lab(full), "coder") == Load(
        "coder", "s1", ("chat", "embed", "x"), why="evicting chat, embed, x (least recently used) on s1"
    )


def test_idle_engines_unload_after_keep_alive_down_to_the_minimum() -> None:
    hosts = (
        Host("s1", 100, (Engine("coder", 40, last_used=600), Engine("chat", 20, last_used=900))),
        Host("s2", 100, (Engine("chat", 20, last_used=100), Engine("embed", 2, last_used=999))),
    )
    assert expired(lab(*hosts)) == [
        Unload("coder", "s1", "idle 400 s (keep_alive 300 s)"),
        Unload("chat", "s2", "idle 900 s (keep_alive 60 s)"),  # one chat stays: its minimum is 1
    ]
    busy = (Host("s1", 100, (Engine("coder", 40, last_used=600, inflight=1),)),)
    assert expired(lab(*busy)) == []


def test_a_sustained_queue_gains_a_replica_and_a_sustained_quiet_loses_it() -> None:
    one = (Host("s1", 100, (Engine("chat", 20, inflight=4),)), Host("s2", 100))
    trends: dict[str, Trend] = {}
    for second in range(0, int(UP_AFTER_S) + 1):  # a long queue, every second
        snapshot = lab(*one, waiting={"chat": UP_QUEUE}, now=second)
        trends = observe(trends, snapshot)
        decided = scale(snapshot, trends)
        assert decided == (
            [] if second < UP_AFTER_S else [Load("chat", "s2", why="queue long for 10 s; 100 GB free on s2")]
        )
    two = (
        Host("s1", 100, (Engine("chat", 20, inflight=2, last_used=5),)),
        Host("s2", 100, (Engine("chat", 20, last_used=3),)),
    )
    trends = {}
    for second in range(0, int(DOWN_AFTER_S) + 1):
        snapshot = lab(*two, now=second)
        trends = observe(trends, snapshot)
        decided = scale(snapshot, trends)
        assert decided == ([] if second < DOWN_AFTER_S else [Unload("chat", "s2", "quiet for 120 s")])


def test_a_queue_that_comes_and_goes_scales_nothing() -> None:
    one = (Host("s1", 100, (Engine("chat", 20, inflight=4),)), Host("s2", 100))
    trends: dict[str, Trend] = {}
    for second in range(0, 3 * int(UP_AFTER_S)):
        snapshot = lab(*one, waiting={"chat": UP_QUEUE if second % 5 else 0}, now=second)
        trends = observe(trends, snapshot)
        assert scale(snapshot, trends) == []  # never long for UP_AFTER_S in a row; never quiet (all in flight)


def test_a_model_below_its_minimum_gains_an_engine_on_a_host_without_one() -> None:
    hosts = (Host("s1", 100, (Engine("chat", 20),)), Host("s2", 30), Host("s3", 60))
    wanted = Lab(0, hosts, {"chat": Offer("chat", 20, min_replicas=2, max_replicas=3)})
    assert below_minimum(wanted) == [Load("chat", "s2", why="min_replicas 2; 30 GB free on s2")]
    loading = Lab(0, (*hosts[:1], Host("s2", 30, (Engine("chat", 20, state="loading"),))), wanted.offers)
    assert below_minimum(loading) == []


def test_a_model_still_leaving_a_host_loads_elsewhere() -> None:
    leaving = Host("s2", 200, (Engine("coder", 40, state="unloading"),))
    assert cold_start(lab(Host("s1", 50), leaving), "coder") == Load("coder", "s1", why="50 GB free on s1")
