"""A change to a running lab, in waves: when an edit restarts every replica of a model, they restart a few at a
time (each drained first, the next wave only once the last serves again), so the model never stops answering.

Pure: the plan is a function of which hosts change and what each serves; lab.up carries it out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cluster.bringup import preflight, rollout
from cluster.bringup.fleet import Report
from cluster.bringup.preflight import HostOutcome
from cluster.placement.hostsfile import HostSpec
from cluster.placement.plan import Assignment


@dataclass(frozen=True)
class Replica:
    """What restarts as one: a host, or every host of a shard group (a group serves only whole)."""

    key: str  # the host's label, or the group's name
    labels: tuple[str, ...]
    model: str


def replicas(assignments: Iterable[Assignment]) -> list[Replica]:
    """The routed replicas of the plan, in its order."""
    found: dict[str, tuple[list[str], str]] = {}
    for a in assignments:
        key = a.group.name if a.group is not None else a.host.label
        found.setdefault(key, ([], a.model.name))[0].append(a.host.label)
    return [Replica(key, tuple(labels), model) for key, (labels, model) in found.items()]


def waves(changing: set[str], plan: list[Replica]) -> list[list[str]]:
    """The host labels to restart, wave by wave: at most half of a model's replicas at once (one at a time when it
    has two or three), so at least half serve throughout. A model with one replica has no other to serve: it
    restarts in the first wave. Hosts that change but serve nothing any more (stopped) go in the first wave too."""
    planned = {label for r in plan for label in r.labels}
    result: list[list[str]] = [sorted(changing - planned)]
    by_model: dict[str, list[Replica]] = {}
    for replica in plan:
        by_model.setdefault(replica.model, []).append(replica)
    for serving in by_model.values():
        moving = [r for r in serving if changing & set(r.labels)]
        if not moving:
            continue
        at_once = max(1, len(serving) // 2)
        for start in range(0, len(moving), at_once):
            index = start // at_once
            while len(result) <= index:
                result.append([])
            result[index] += [label for r in moving[start : start + at_once] for label in r.labels]
    return [sorted(wave) for wave in result if wave]


Bring = Callable[[preflight.Probe, HostSpec], Awaitable[HostOutcome]]
WaitReady = Callable[[list[HostOutcome]], Awaitable[None]]  # until they serve, or marked "not ready"


@dataclass(frozen=True)
class Change:
    """A running lab about to change: its router, and the hosts whose agents restart."""

    url: str  # the running router's ("" when none runs: nothing to drain or keep serving)
    changing: frozenset[str]  # host labels
    home: Path


async def bring_in_waves(
    pairs: list[tuple[preflight.Probe, HostSpec]],
    change: Change,
    plan: list[Replica],
    bring: Bring,
    wait_ready: WaitReady,
    report: Report,
) -> list[HostOutcome]:
    """Bring every host up; those that change, wave by wave (`waves`), each drained first. A wave that does not
    serve again stops the change: the hosts of later waves keep serving as they were (said, with why)."""
    planned = waves(set(change.changing), plan) if change.url else [sorted(change.changing)]
    later = {label for wave in planned[1:] for label in wave}
    if len(planned) > 1:
        report(
            f"rolling change in {len(planned)} waves, so that every model keeps serving: "
            + "; ".join(", ".join(wave) for wave in planned)
        )
    outcomes: dict[str, HostOutcome] = {}
    waiting = [pairs_of(pairs, {h.label for _, h in pairs} - later), *(pairs_of(pairs, set(w)) for w in planned[1:])]
    for index, wave in enumerate(waiting):
        if index:
            previous = [outcomes[h.label] for _, h in waiting[index - 1] if h.label in change.changing]
            await wait_ready([o for o in previous if o.state == "started"])
            if stuck := [o.label for o in previous if o.state in ("not ready", "failed", "unreachable")]:
                kept = [h.label for _, h in (p for rest in waiting[index:] for p in rest)]
                report(
                    f"rolling change stopped: {', '.join(stuck)} did not serve again; {', '.join(kept)} keep "
                    "serving as they were (fix and run `cluster up` again)"
                )
                for probe, host in (p for rest in waiting[index:] for p in rest):
                    probe.outcome.state, probe.outcome.reason = "failed", "not changed: an earlier wave did not serve"
                    outcomes[host.label] = probe.outcome
                break
        outcomes |= await _wave(wave, change, bring, report)
    return [outcomes[h.label] for _, h in pairs]


def pairs_of(pairs: list[tuple[preflight.Probe, HostSpec]], labels: set[str]) -> list[tuple[preflight.Probe, HostSpec]]:
    return [(p, h) for p, h in pairs if h.label in labels]


async def _wave(
    pairs: list[tuple[preflight.Probe, HostSpec]], change: Change, bring: Bring, report: Report
) -> dict[str, HostOutcome]:
    """Drain the wave's changing hosts (their requests in flight finish), bring them all up, and put back in
    service any that was drained but not restarted."""
    labels = [h.label for _, h in pairs if h.label in change.changing]
    drained = (
        await asyncio.to_thread(rollout.drain_workers, change.url, labels, change.home, report)
        if (labels and change.url)
        else []
    )
    try:
        outcomes = await asyncio.gather(*(bring(p, h) for p, h in pairs))
    except BaseException:
        if drained:
            await asyncio.to_thread(rollout.undrain, change.url, drained, change.home, report)
        raise
    restarted = {o.label for o in outcomes if o.state in ("started", "idle")}
    if kept := [label for label in drained if label not in restarted]:
        await asyncio.to_thread(rollout.undrain, change.url, kept, change.home, report)
    return {o.label: o for o in outcomes}
