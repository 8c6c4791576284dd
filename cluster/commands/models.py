"""`cluster models prepare`: the model cache."""

from __future__ import annotations

import argparse

from rich.markup import escape

from cluster.commands.output import console, err_console
from worker.shared.models import BUNDLED_NAME, ModelError, bundled_dir, is_bundled, prepare_bundled


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="model cache").add_subparsers(dest="models_command", required=True)
    prepare = models.add_parser("prepare", help="convert the bundled model into the cache (once)")
    prepare.add_argument("name", nargs="?", default=BUNDLED_NAME)
    prepare.set_defaults(func=_models_prepare)


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
