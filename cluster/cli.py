"""`cluster`: the operator CLI (its command groups: cluster/commands/).

cluster up [--engine vllm|sim] [--port 8000] [--detach] [--ask "question"]
cluster install HOSTS | up HOSTS | plan HOSTS | units HOSTS HOST
cluster down | status [--watch|--json] | drain | logs [agent|router|engine] | certs | keys | teams | usage | models
"""

from __future__ import annotations

import argparse
import sys

from rich.markup import escape

from cluster.bringup import labstate, local
from cluster.commands import certs, keys, models, operate, signals, up
from cluster.commands.output import console, err_console


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cluster", description="Orchard: one OpenAI endpoint for a Mac lab")
    sub = parser.add_subparsers(dest="command", required=True)
    up.add(sub)
    operate.add(sub)
    certs.add(sub)
    keys.add_commands(sub, local.orchard_home, console)
    models.add(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    signals.take()
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        code = 130
    except labstate.LabError as exc:  # a lab record this Orchard cannot read, wherever a command met it
        err_console.print(f"[red]{escape(str(exc))}[/]")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
