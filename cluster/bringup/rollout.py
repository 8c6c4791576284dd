"""Changing a running lab without cutting anyone off: drain the agents about to restart, and hand the router's
listening socket to a new router before the old one stops (cluster.router.handover).

Used by `cluster up` when the hosts file or Orchard itself changed, and by `headrouter.restart_router`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import ValidationError

from cluster.bringup import drain, units
from cluster.bringup.fleet import Fleet, Report
from cluster.gateway.keys import operator_headers
from cluster.pki import authority
from cluster.router import handover
from cluster.router.rows import WorkersReply
from worker.shared import procs
from worker.shared.launch import RouterConfig

DRAIN_TIMEOUT_S = 30.0
HAND_OVER_TIMEOUT_S = 30.0


class RolloutError(Exception):
    """The new router did not come up; the old one still serves. The message says where to look."""


SERVICE_START_S = 10.0  # until the service manager names the router's process


def start_router(
    config: RouterConfig, home: Path, service: units.RouterService | None = None, slot: units.Slot = "a"
) -> int:
    """A router that outlives `cluster up`: kept running (restarted if it dies, and at boot) by the head's service
    manager in `slot` of `service`, else by its keeper. Its pid. Raises RolloutError (a service not started)."""
    if service is None:
        return Fleet(home / "logs", tied_to_parent=False, keep=True).start_router(config).pid
    try:
        service.start(config, slot)
    except (units.ServiceError, OSError) as exc:
        raise RolloutError(f"the router's {service.manager} service did not start: {exc}") from None
    deadline = time.monotonic() + SERVICE_START_S
    while (pid := service.main_pid(slot)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid is None:
        raise RolloutError(
            f"{service.manager} runs no router for {service.name(slot)} {SERVICE_START_S:g} s after "
            f"it started it (see {home / 'logs' / 'router.log'})"
        )
    return pid


def hand_over(
    old_pid: int, config: RouterConfig, home: Path, report: Report, start: Callable[[], int] | None = None
) -> int:
    """Start the new router on the old one's listening socket, wait until it sees ready every worker of its
    config that the old one saw ready, publish its offer for the next hand-over, then SIGTERM the old one: it
    stops accepting and finishes its streams. If the new one fails, it is stopped and the old one keeps serving
    (and offering) as before: RolloutError. `start`: how the new router starts (default: start_router)."""
    started = time.monotonic()
    with httpx.Client(timeout=2.0, headers=operator_headers(home), verify=authority.trust(home)) as client:
        before = _poll(client, config.local_url, old_pid, lambda reply: True, 5.0)
        wanted = {r.address for r in (before.workers if before else []) if r.ready and r.address in config.workers}
        pid = start() if start is not None else start_router(config, home)
        report(f"router: handing over to a new router (pid {pid}); the old one (pid {old_pid}) finishes its streams")
        seen = _poll(client, config.local_url, pid, lambda reply: wanted <= _ready(reply), HAND_OVER_TIMEOUT_S)
    if seen is None or not handover.publish(Path(config.handover).expanduser(), seen.router_pid):
        procs.terminate_tree(pid, config.shutdown_grace_s)
        raise RolloutError(
            f"the new router did not see {len(wanted)} ready worker(s) within "
            f"{HAND_OVER_TIMEOUT_S:g} s; it was stopped and the old one serves on "
            f"(see {home / 'logs' / 'router.log'})"
        )
    procs.signal_group(old_pid, signal.SIGTERM)
    report(f"router: handed over in {time.monotonic() - started:.1f} s")
    return pid


def _ready(reply: WorkersReply) -> set[str]:
    return {row.address for row in reply.workers if row.ready}


def _poll(
    client: httpx.Client, url: str, pid: int, enough: Callable[[WorkersReply], bool], timeout_s: float
) -> WorkersReply | None:
    """The reply of the router `pid` (or its keeper's child) once `enough(reply)`; None when it exits or time
    runs out. A new connection each time, so the kernel's accept queue hands them to either router."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and procs.alive(pid):
        try:
            response = client.get(url + "/orchard/workers", headers={"connection": "close"})
            reply = WorkersReply.model_validate_json(response.raise_for_status().content)
        except (httpx.HTTPError, ValidationError):
            reply = None
        if reply is not None and reply.router_pid in (pid, *procs.descendants(pid)) and enough(reply):
            return reply
        time.sleep(0.1)
    return None


def drain_workers(url: str, labels: list[str], home: Path, report: Report) -> list[str]:
    """Take `labels` out of service before their agents restart and wait (DRAIN_TIMEOUT_S) for what they run;
    the labels actually drained, for `undrain` should the restart not happen."""
    with httpx.Client(timeout=5.0, headers=operator_headers(home), verify=authority.trust(home)) as client:
        done = drain.drain(client, url, labels, DRAIN_TIMEOUT_S, report)
    if done.lost:
        report(f"{done.lost}: restarting now")
    for label, why in done.refused.items():  # not routed (a group member) or not answering: nothing to wait for
        report(f"{label}: not drained before its restart: {why}")
    if done.rows and not done.lost:
        cut = f"{done.left} request(s) still running: cut by the restart" if done.left else "drained"
        report(f"draining {', '.join(done.rows)} before restarting: {cut}")
    return list(done.rows)


def undrain(url: str, labels: list[str], home: Path, report: Report) -> None:
    """Put workers drained for a restart that did not happen back in service (their agent holds the flag)."""
    with httpx.Client(timeout=5.0, headers=operator_headers(home), verify=authority.trust(home)) as client:
        for label in labels:
            try:
                drain.set_draining(client, url, label, draining=False)
                report(f"{label}: not restarted after all; taking requests again")
            except drain.DrainError as exc:
                report(f"{label}: still draining ({exc}); undo with: cluster undrain {label}")
