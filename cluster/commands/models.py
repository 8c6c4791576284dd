"""`cluster models`: the model store on the head and on the lab's hosts.

prepare [NAME]                      convert the bundled model into the cache (once)
pull SOURCE [--revision R] [--name N]   a hub model at one commit, or a local folder, into the store
list [HOSTS] [--json]               the store, and with a hosts file what every host holds
push HOSTS                          each host gets its models' files, as `cluster up` gives them
rm SOURCE [--revision R]            out of the head's store
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from pydantic import BaseModel
from rich.markup import escape
from rich.table import Table

from cluster.bringup import lab, local, modelcopy
from cluster.bringup.labstate import LabError
from cluster.commands.output import console, err_console
from cluster.commands.up import load_spec
from cluster.console.progress import HostSteps
from cluster.placement.plan import PlacementError
from cluster.store import catalog
from worker.shared import modelfiles
from worker.shared.daemon import ModelsReply
from worker.shared.models import BUNDLED_NAME, ModelError, bundled_dir, is_bundled, prepare_bundled
from worker.shared.store.messages import gb


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="the model store").add_subparsers(dest="models_command", required=True)
    prepare = models.add_parser("prepare", help="convert the bundled model into the cache (once)")
    prepare.add_argument("name", nargs="?", default=BUNDLED_NAME)
    prepare.set_defaults(func=_models_prepare)
    pull = models.add_parser("pull", help="a hub model (org/name) or a local folder into the head's store")
    pull.add_argument("source", help=f"org/name on the hub, a folder, or {BUNDLED_NAME}")
    pull.add_argument("--revision", help="a hub commit, branch or tag (default: main), resolved to one commit")
    pull.add_argument("--name", help="a folder's name in the store (default: the folder's name)")
    pull.set_defaults(func=_pull)
    listing = models.add_parser("list", help="the store's models, and with a hosts file every host's")
    listing.add_argument("file", nargs="?", type=Path, help="hosts file: also list what each host holds")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)
    push = models.add_parser("push", help="copy each host's models to it over the lab network (no engine starts)")
    push.add_argument("file", type=Path)
    push.set_defaults(func=_push)
    remove = models.add_parser("rm", help="remove a model (one revision, or all) from the head's store")
    remove.add_argument("source")
    remove.add_argument("--revision")
    remove.set_defaults(func=_rm)


def _pull(args: argparse.Namespace) -> int:
    home = local.orchard_home()
    folder = Path(args.source).expanduser()
    try:
        if is_bundled(args.source):
            entry = catalog.import_bundled(home, lambda step: console.print(f"  • {escape(step)}"))
        elif folder.is_dir():
            entry = catalog.import_folder(home, folder.resolve(), args.name or folder.resolve().name)
        elif modelfiles.is_hub_id(args.source):
            entry = asyncio.run(catalog.pull_hub(home, args.source, args.revision, _printer()))
        else:
            err_console.print(f"{escape(args.source)} is neither a folder nor a hub id (org/name)")
            return 2
    except ModelError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/]")
        return 1
    except Exception as exc:  # the hub's own errors: offline, no such repo, gated
        err_console.print(f"[red]could not pull {escape(args.source)}:[/] {escape(str(exc))}")
        return 1
    m = entry.manifest
    console.print(f"{m.source} @ {m.revision}: {len(m.files)} files, {gb(m.size)}, verified, in {entry.folder.path}")
    return 0


def _printer() -> catalog.Report:
    last = [""]

    def say(line: str) -> None:
        if line != last[0]:
            last[0] = line
            console.print(f"  • {escape(line)}")

    return say


class StoreRow(BaseModel):
    """One model revision as `cluster models list --json` shows it."""

    source: str
    revision: str
    files: int
    size: int
    verified: bool
    origin: str
    hosts: dict[str, str]  # host → "complete" | "k of n files" (with a hosts file)


def _list(args: argparse.Namespace) -> int:
    home = local.orchard_home()
    held: dict[str, ModelsReply | str] = {}
    if args.file is not None:
        spec = load_spec(args.file)
        if spec is None:
            return 2
        held = asyncio.run(modelcopy.held(spec))
    rows = _rows(home, held)
    if args.json:
        print(
            json.dumps(
                {
                    "models": [r.model_dump() for r in rows],
                    "unreachable": {k: v for k, v in held.items() if isinstance(v, str)},
                },
                indent=2,
            )
        )
        return 0
    table = Table(title=f"models in {catalog.root(home)}" + (f" and on the hosts of {args.file}" if held else ""))
    for column in ("model", "revision", "size", "files", "head", *held):
        table.add_column(column)
    for r in rows:
        head = "verified" if r.verified else ("—" if r.origin == "(hosts only)" else "not verified")
        table.add_row(r.source, r.revision[:12], gb(r.size), str(r.files), head, *(r.hosts.get(h, "") for h in held))
    console.print(table)
    for label, why in held.items():
        if isinstance(why, str):
            err_console.print(f"{escape(label)}: {escape(why)}")
    return 0


def _rows(home: Path, held: dict[str, ModelsReply | str]) -> list[StoreRow]:
    rows = {
        (e.manifest.source, e.manifest.revision): StoreRow(
            source=e.manifest.source,
            revision=e.manifest.revision,
            files=len(e.manifest.files),
            size=e.manifest.size,
            verified=e.verified,
            origin=e.manifest.origin,
            hosts={},
        )
        for e in catalog.entries(home)
    }
    for label, reply in held.items():
        if isinstance(reply, str):
            continue
        for m in reply.models:
            row = rows.setdefault(
                (m.source, m.revision),
                StoreRow(
                    source=m.source,
                    revision=m.revision,
                    files=m.files,
                    size=m.size,
                    verified=False,
                    origin="(hosts only)",
                    hosts={},
                ),
            )
            row.hosts[label] = "complete" if m.verified == m.files else f"{m.verified} of {m.files} files"
    return list(rows.values())


def _push(args: argparse.Namespace) -> int:
    spec = load_spec(args.file)
    if spec is None:
        return 2
    steps = HostSteps(console, [h.label for h in spec.hosts], "copied")
    try:
        with steps.live():
            placed = asyncio.run(lab.push_models(spec, local.orchard_home(), steps.report))
    except (PlacementError, LabError) as exc:
        err_console.print(f"[red]cluster models push failed:[/] {escape(str(exc))}")
        return 1
    table = Table(title=f"models on the hosts of {args.file}")
    for column in ("host", "model", "folder"):
        table.add_column(column)
    rows = [(label, "(pinned)", folder) for label, folder in placed.pinned.items()]
    rows += [(label, f"{model} (on demand)", folder) for (model, label), folder in placed.on_demand.items()]
    for label, model, folder in rows:
        shown = f"[red]{escape(str(folder))}[/]" if isinstance(folder, ModelError) else escape(folder)
        table.add_row(label, model, shown)
    console.print(table)
    return 1 if any(isinstance(row[2], ModelError) for row in rows) else 0


def _rm(args: argparse.Namespace) -> int:
    gone = catalog.remove(local.orchard_home(), args.source, args.revision)
    if not gone:
        err_console.print(f"{escape(args.source)}{'@' + args.revision if args.revision else ''} is not in the store")
        return 1
    for entry in gone:
        console.print(f"removed {entry.manifest.source} @ {entry.manifest.revision} ({gb(entry.manifest.size)})")
    return 0


def _models_prepare(args: argparse.Namespace) -> int:
    if not is_bundled(args.name):
        err_console.print(
            f"only the bundled model ({BUNDLED_NAME}) is prepared by Orchard; "
            "give other models to the engine as a local path or hub id"
        )
        return 2
    target = bundled_dir()
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    steps = ["loading tokenizer", "dequantizing", "writing safetensors", "fixing config"]
    try:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task(f"preparing {BUNDLED_NAME}", total=len(steps))

            def advance(message: str) -> None:
                progress.update(task, advance=1, description=message)

            folder = prepare_bundled(progress=advance)
    except ModelError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/]")
        return 1
    console.print(f"{BUNDLED_NAME} is ready at {folder}" + ("" if folder == target else f" ({target})"))
    return 0
