"""Which hosts restart in which wave when a running lab changes, so that no model stops answering."""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest import mock

import pytest

from cluster.bringup.preflight import HostOutcome, Probe
from cluster.bringup.rolling import Change, Replica, bring_in_waves, waves
from cluster.placement.hostsfile import HostSpec


def _plan(*replicas: tuple[str, str]) -> list[Replica]:
    """(model, "h1" or "g:h4+h5" for a group) per replica."""
    found = []
    for model, hosts in replicas:
        key, _, labels = hosts.rpartition(":")
        found.append(Replica(key or labels, tuple(labels.split("+")), model))
    return found


TWO = _plan(("chat", "h1"), ("chat", "h2"))
FOUR = _plan(("chat", "h1"), ("chat", "h2"), ("chat", "h3"), ("chat", "h4"))
MIXED = _plan(("chat", "h1"), ("chat", "h2"), ("code", "h3"), ("big", "g:h4+h5"), ("big", "g2:h6+h7"))


@pytest.mark.parametrize(
    ("changing", "plan", "expected"),
    [
        ({"h2"}, TWO, [["h2"]]),  # the other replica serves meanwhile
        ({"h1", "h2"}, TWO, [["h1"], ["h2"]]),  # every replica: one at a time
        ({"h1", "h2", "h3", "h4"}, FOUR, [["h1", "h2"], ["h3", "h4"]]),  # at most half at once
        ({"h1", "h2", "h3"}, FOUR, [["h1", "h2"], ["h3"]]),  # never fewer than half serving
        ({"h3"}, MIXED, [["h3"]]),  # a lone replica has nothing to wait for
        ({"h1", "h2", "h3"}, MIXED, [["h1", "h3"], ["h2"]]),  # waves of different models overlap
        ({"h4", "h6"}, MIXED, [["h4", "h5"], ["h6", "h7"]]),  # a group restarts whole, one group at a time
        ({"h5"}, MIXED, [["h4", "h5"]]),  # a member's change relaunches its group; the other group serves
        ({"h9", "h1", "h2"}, TWO, [["h1", "h9"], ["h2"]]),  # a host with nothing placed any more: first
        (set(), MIXED, []),
    ],
)
def test_waves(changing: set[str], plan: list[Replica], expected: list[list[str]]) -> None:
    assert waves(changing, plan) == expected


def _pairs(labels: list[str]) -> list[tuple[Probe, HostSpec]]:
    return [
        (Probe(HostOutcome(label, f"10.0.0.{i}")), HostSpec(name=label, address=f"10.0.0.{i}"))
        for i, label in enumerate(labels, start=1)
    ]


@pytest.mark.parametrize("second_serves", [True, False])
def test_each_wave_starts_once_the_last_serves_again_and_one_that_does_not_stops_the_change(
    second_serves: bool, tmp_path: Path
) -> None:
    """h1 and h2 serve `chat` and both change; h3 (code) is new. Drains are skipped (no router URL is needed for
    the plan here: the drain step is rollout's, tested with a router elsewhere)."""
    steps: list[str] = []

    async def bring(probe: Probe, host: HostSpec) -> HostOutcome:
        steps.append(f"bring {host.label}")
        probe.outcome.state = "started"
        return probe.outcome

    async def wait_ready(outcomes: list[HostOutcome]) -> None:
        steps.append("wait " + ",".join(o.label for o in outcomes))
        for o in outcomes:
            o.state = "ready" if second_serves else "not ready"

    plan = _plan(("chat", "h1"), ("chat", "h2"), ("code", "h3"))
    change = Change("http://router", frozenset({"h1", "h2"}), tmp_path)
    said: list[str] = []
    with mock.patch("cluster.bringup.rollout.drain_workers", lambda url, labels, home, report: list(labels)):
        outcomes = asyncio.run(bring_in_waves(_pairs(["h1", "h2", "h3"]), change, plan, bring, wait_ready, said.append))
    assert steps[:3] == ["bring h1", "bring h3", "wait h1"]
    assert said[0] == "rolling change in 2 waves, so that every model keeps serving: h1; h2"
    if second_serves:
        assert steps[3:] == ["bring h2"] and [o.state for o in outcomes] == ["ready", "started", "started"]
    else:
        assert steps[3:] == [] and outcomes[1].state == "failed" and "h2 keep serving as they were" in said[-1]
