"""Who pulls which file from whom: a pipeline per file, pure.

The hosts that need a file form a chain in lab order; the first pulls it from a host that already holds it (or
from the head), each next one from the one before — which serves the file while it is still arriving. So the
head sends each file about once, every host receives it once and sends it at most once, and the lab's time is
about one copy's, not one per host. The head is every host's last resort: a peer that fails or stalls is passed
over for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Holder:
    """A host as the plan sees it: where it serves (\"\" when it cannot), what it holds, what it must get."""

    label: str
    url: str
    have: frozenset[str]
    needs: tuple[str, ...]


def sources(
    head_url: str, hosts: Sequence[Holder], files: Sequence[str], chain: bool = True
) -> dict[str, dict[str, tuple[str, ...]]]:
    """For each host, each file it needs → the URLs to pull it from, best first. `chain` false: every host from
    the head (the baseline the benchmark measures against)."""
    plan: dict[str, dict[str, tuple[str, ...]]] = {h.label: {} for h in hosts}
    for index, path in enumerate(files):
        holders = [h.url for h in hosts if path in h.have and h.url]
        previous = holders[index % len(holders)] if holders else head_url  # spread first pulls over holders
        for host in hosts:
            if path not in host.needs:
                continue
            first = previous if chain else head_url
            plan[host.label][path] = (first, head_url) if first != head_url else (head_url,)
            if host.url:
                previous = host.url
    return plan


def wanted(files: Sequence[str], only: Mapping[str, frozenset[str]] | None, label: str) -> tuple[str, ...]:
    """The files a host must hold: all of them, or a pipeline rank's own (`only`), always with the small ones
    every rank reads (config, tokenizer)."""
    mine = (only or {}).get(label)
    if mine is None:
        return tuple(files)
    return tuple(f for f in files if f in mine or not f.endswith(".safetensors"))
