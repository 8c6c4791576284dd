"""Taking workers out of service gently, over the router's operator routes: `POST /orchard/drain` tells a worker's
agent to take no new requests (the router sends them to the others), then the caller waits, bounded, until the
requests it runs have finished. Used by `cluster drain` and, for every worker, by `cluster down`."""

from __future__ import annotations

import time

import httpx
from pydantic import ValidationError

from cluster.bringup.fleet import read_workers
from cluster.router.rows import WorkerRow


class DrainError(Exception):
    """The router refused or did not answer; the message says why."""


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
