"""Taking workers out of service gently, over the router's operator routes: `POST /orchard/drain` tells a worker's
agent to take no new requests (the router sends them to the others), then the caller waits, bounded, until the
requests it runs have finished. One flow (`drain`) for `cluster drain`, for every worker before `cluster down`, and
for the agents a changed hosts file restarts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from cluster.bringup.fleet import read_workers
from cluster.router.rows import WorkerRow


class DrainError(Exception):
    """The router refused or did not answer; the message says why."""


@dataclass(frozen=True)
class Drained:
    rows: dict[str, WorkerRow]  # each name the router drained → its worker
    refused: dict[str, str]  # each name it could not → why (not routed, not answering)
    left: int  # requests still in flight when the wait ended (0: all finished)
    lost: str = ""  # the router stopped answering during the wait: why (what it had drained stays drained)


def drain(
    client: httpx.Client, url: str, names: list[str], timeout_s: float, say: Callable[[str], None] = lambda _: None
) -> Drained:
    """The named workers take no new requests; then wait, at most `timeout_s`, for what they run to finish."""
    rows: dict[str, WorkerRow] = {}
    refused: dict[str, str] = {}
    for name in names:
        try:
            rows[name] = set_draining(client, url, name)
        except DrainError as exc:
            refused[name] = str(exc)
    busy = sum(row.inflight for row in rows.values())
    if busy and timeout_s > 0:
        say(f"draining: waiting up to {timeout_s:g} s for {busy} request(s) in flight")
    try:
        left = wait_idle(client, url, {row.address for row in rows.values()}, timeout_s) if rows else 0
    except DrainError as exc:
        return Drained(rows, refused, busy, lost=str(exc))
    return Drained(rows, refused, left)


def set_draining(client: httpx.Client, url: str, worker: str, draining: bool = True) -> WorkerRow:
    try:
        answer = client.post(url + "/orchard/drain", json={"worker": worker, "draining": draining})
    except httpx.HTTPError as exc:
        raise DrainError(f"the router at {url} did not answer: {exc}") from None
    if answer.status_code != 200:
        raise DrainError(answer.json().get("error", {}).get("message", answer.text))
    return WorkerRow.model_validate_json(answer.content)


def wait_idle(client: httpx.Client, url: str, addresses: set[str], timeout_s: float) -> int:
    """Requests still in flight on those workers when they finished, or when `timeout_s` ran out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            rows = read_workers(client, url)
        except (httpx.HTTPError, ValidationError) as exc:  # not "idle": we cannot tell
            raise DrainError(f"the router at {url} stopped answering: {exc}") from None
        busy = sum(r.inflight for r in rows if r.address in addresses)
        if busy == 0 or time.monotonic() >= deadline:
            return busy
        time.sleep(0.5)
