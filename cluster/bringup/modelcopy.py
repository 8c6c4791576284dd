"""The models' files on their hosts before any engine starts (issue 29): each store-backed model — the bundled
one, a hub id, a folder imported into the store — is taken from the head's store (pulled there first when
missing) and copied to the hosts that run it over the lab network; the engine is then given the local folder.
A path source is used as it is (it must exist on every host, as before); a sim host needs no files.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cluster.bringup import preflight, remote
from cluster.bringup.fleet import Report
from cluster.placement.hostsfile import ClusterSpec, HostSpec, ModelSpec
from cluster.placement.plan import Assignment
from cluster.store import catalog, fanout, push
from cluster.store.ranks import files_for_layers
from worker.shared import modelfiles
from worker.shared.daemon import ModelsReply
from worker.shared.layers import rank_layers
from worker.shared.models import ModelError, is_bundled
from worker.shared.store.messages import gb


@dataclass(frozen=True)
class Stored:
    """Each store-backed model's entry, or why it has none (its hosts then fail with that reason)."""

    entries: dict[str, catalog.Entry]
    problems: dict[str, str]

    def facts_source(self, model: ModelSpec) -> str:
        """What placement reads the model's facts from: the store's folder when it has one."""
        entry = self.entries.get(model.name)
        return str(entry.folder.path) if entry else model.source


def _store_backed(model: ModelSpec, spec: ClusterSpec, home: Path) -> bool:
    hosts = [h for h in spec.hosts if model.hosts is None or h.label in model.hosts]
    if hosts and all(h.engine == "sim" for h in hosts) and model.mode is None:
        return False
    return bool(
        is_bundled(model.source)
        or modelfiles.is_hub_id(model.source)
        or (catalog.storable(model.source) and catalog.find(home, model.source, model.revision))
    )


async def stored(spec: ClusterSpec, home: Path, report: Report) -> Stored:
    entries, problems = {}, {}
    for model in spec.models:
        if not _store_backed(model, spec, home):
            continue
        try:
            entries[model.name] = await catalog.ensure(home, model.source, model.revision, report)
        except ModelError as exc:
            problems[model.name] = str(exc)
            report(f"{model.name}: {exc}")
    return Stored(entries, problems)


@dataclass
class Folders:
    """Where the store put each model: a pinned model's folder by host, an on-demand model's by (model, host);
    or why its copy failed."""

    pinned: dict[str, str | ModelError] = field(default_factory=dict)
    on_demand: dict[tuple[str, str], str | ModelError] = field(default_factory=dict)


async def put(
    stored: Stored,
    assignments: list[Assignment],
    probes: dict[str, preflight.Probe],
    report: Report,
    on_demand: Mapping[str, Sequence[HostSpec]] | None = None,
) -> Folders:
    """Each host's model folders (for its engines): the pinned model placed there, and the on-demand models it
    may load (`on_demand`: by model, the hosts)."""
    on_demand = on_demand or {}
    folders = Folders()
    for name, problem in stored.problems.items():
        folders.pinned.update({a.host.label: ModelError(problem) for a in assignments if a.model.name == name})
        folders.on_demand.update({(name, h.label): ModelError(problem) for h in on_demand.get(name, ())})
    for name, entry in stored.entries.items():
        mine = [a for a in assignments if a.model.name == name and (a.group is not None or a.host.engine != "sim")]
        mine = [a for a in mine if probes[a.host.label].conn is not None]
        extra = [h for h in on_demand.get(name, ()) if h.engine != "sim" and probes[h.label].conn is not None]
        if not mine and not extra:
            continue
        only = _rank_files(entry, mine)
        files = [f.path for f in entry.manifest.files]
        targets = [
            push.Target(a.host, probes[a.host.label].conn, fanout.wanted(files, only, a.host.label)) for a in mine
        ] + [push.Target(h, probes[h.label].conn, tuple(files)) for h in extra]
        done = await push.push(entry, targets, report)
        report(summary(name, done, entry.manifest.size))
        for target in targets:
            copied = done.hosts[target.host.label]
            folder = copied.folder if not copied.reason else ModelError(f"model copy: {copied.reason}")
            if any(h.label == target.host.label for h in extra):
                folders.on_demand[(name, target.host.label)] = folder
            else:
                folders.pinned[target.host.label] = folder
        _same_path_for_vllm_groups(mine, folders.pinned, report)
    return folders


def summary(name: str, done: push.Pushed, size: int) -> str:
    """One line for the push: how long, and what left the head against one copy of the model."""
    peers = sum(c.served for c in done.hosts.values())
    copies = done.head_sent / size if size else 0.0
    return (
        f"{name}: {len(done.hosts)} hosts in {done.seconds:.1f} s; the head sent {gb(done.head_sent)} "
        f"({copies:.2f} copies), the hosts {gb(peers)} to each other"
    )


def _rank_files(entry: catalog.Entry, mine: list[Assignment]) -> dict[str, frozenset[str]]:
    """An MLX pipeline rank's weight files: those holding its layers (mlx-lm's sharded_load reads no others)."""
    index = entry.folder.path / "model.safetensors.index.json"
    weight_map = _weight_map(index)
    only = {}
    for a in mine:
        group = a.group
        if group and group.backend == "mlx" and group.mode == "pipeline" and group.layers and weight_map:
            only[a.host.label] = frozenset(files_for_layers(weight_map, *rank_layers(list(group.layers), a.rank)))
    return only


def _weight_map(index: Path) -> dict[str, str]:

    try:
        found = json.loads(index.read_text()).get("weight_map", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}


def _same_path_for_vllm_groups(mine: list[Assignment], placed: dict[str, str | ModelError], report: Report) -> None:
    """vLLM's pipeline workers over Ray open the path rank 0 was given: a group whose members keep the model at
    different paths (their `orchard_dir`s, or homes, differ) is given the source as before where each member can
    find it on its own (the bundled model, a hub id), and fails where it cannot (a name only the store knows)."""
    groups: dict[str, list[Assignment]] = {}
    for a in mine:
        if a.group is not None and a.group.backend == "vllm":
            groups.setdefault(a.group.name, []).append(a)
    for name, members in groups.items():
        paths = {placed.get(a.host.label) for a in members}
        if len(paths) == 1 or any(isinstance(p, ModelError) for p in paths):
            continue
        source = members[0].model.source
        if is_bundled(source) or modelfiles.is_hub_id(source):
            report(f"warning: {name}: its members keep the model at different paths; vLLM gets {source} instead")
            for a in members:
                placed.pop(a.host.label, None)
            continue
        why = (
            f"{name}: vLLM's workers open rank 0's path, and the members keep {source} at different ones: "
            "give them the same orchard_dir"
        )
        for a in members:
            placed[a.host.label] = ModelError(why)


async def held(spec: ClusterSpec) -> dict[str, ModelsReply | str]:
    """Each host's model store, or why it could not be read."""

    async def one(host: HostSpec) -> ModelsReply | str:
        try:
            conn = await remote.connect(host)
        except remote.RemoteError as exc:
            return str(exc)
        try:
            return await remote.run_daemon(conn, host, ["models", "--dir", host.orchard_dir], ModelsReply)
        except remote.RemoteError as exc:
            return str(exc)
        finally:
            conn.close()

    replies = await asyncio.gather(*(one(h) for h in spec.hosts))
    return {h.label: r for h, r in zip(spec.hosts, replies, strict=True)}
