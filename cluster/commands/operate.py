"""`cluster down`, `status`, `drain`/`undrain`, `logs`: a running lab or local cluster."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from pydantic import ValidationError
from rich.markup import escape

from cluster.bringup import drain, lab, labstate, local, remote
from cluster.bringup.fleet import fetch_workers, read_reply
from cluster.bringup.sudo import Sudo
from cluster.commands import certs, up
from cluster.commands.output import console, err_console
from cluster.console import status
from cluster.gateway.keys import operator_headers
from cluster.pki import authority
from worker.shared import procs


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    down = sub.add_parser("down", help="stop the lab or the local cluster (requests in flight may finish first)")
    down.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds requests in flight get to finish before everything stops (0: stop now)",
    )
    down.set_defaults(func=_down)
    status_cmd = sub.add_parser("status", help="show the workers (tokens/s and TTFT p50 over the last minute too)")
    shown = status_cmd.add_mutually_exclusive_group()
    shown.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    shown.add_argument("--json", action="store_true", help="print the workers as JSON")
    status_cmd.set_defaults(func=_status)
    drain_cmd = sub.add_parser("drain", help="take a worker out for maintenance: no new requests, running ones finish")
    drain_cmd.add_argument("worker", help="a worker id (a lab host's name), address or host")
    drain_cmd.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for it to be idle")
    drain_cmd.set_defaults(func=_drain)
    undrain = sub.add_parser("undrain", help="let a drained worker take requests again")
    undrain.add_argument("worker", help="a worker id (a lab host's name), address or host")
    undrain.set_defaults(func=_drain)
    logs = sub.add_parser("logs", help="a host's agent log (lab), or agent|router|engine (local)")
    logs.add_argument("which", nargs="?", default="agent", help="HOST, or agent|router|engine")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.set_defaults(func=_logs)


def _down(args: argparse.Namespace) -> int:
    home = local.orchard_home()
    _drain_all(home, args.drain_timeout)
    if asyncio.run(lab.down(home, report=lambda m: console.print(f"  • {m}"), root=Sudo(up.asker(None)))):
        console.print("stopped the lab.")
        return 0
    stopped = local.stop(home)
    if stopped:
        console.print(f"stopped Orchard (pids {', '.join(map(str, stopped))}).")
    else:
        console.print("nothing to stop: no Orchard cluster is running.")
    return 0


def _running(home: Path) -> labstate.LabState | local.LocalState | None:
    """The lab or local cluster running from `home`, or None (said on the console)."""
    state = labstate.read_state(home) or local.running_state(home)
    if state is None:
        console.print("no Orchard cluster is running (start one with: cluster up [hosts.toml])", markup=False)
    return state


def _status(args: argparse.Namespace) -> int:
    import httpx

    home = local.orchard_home()
    if (state := _running(home)) is None:
        return 1
    with httpx.Client(timeout=5, headers=operator_headers(home), verify=authority.trust(home)) as client:
        if args.watch:
            try:  # Ctrl-C ends it (cluster/commands/signals.py, even with SIGINT ignored at start)
                status.watch(console, lambda: read_reply(client, state.url), state.url)
            except KeyboardInterrupt:
                return 0
        try:
            reply = read_reply(client, state.url)
        except (httpx.HTTPError, ValidationError) as exc:
            reason = escape(str(exc).splitlines()[0])
            err_console.print(
                f"[red]the router at {state.url} did not answer as expected:[/] {reason} (cluster logs router)"
            )
            return 1
    if args.json:
        print(status.as_json(reply))
        return 0
    console.print(status.view(reply, state.url))
    certs.print_expiry(home)
    return 0


def _drain(args: argparse.Namespace) -> int:
    """Stop new work on one worker and wait (bounded) until what it runs has finished; or resume it."""
    import httpx

    home = local.orchard_home()
    if (state := _running(home)) is None:
        return 1
    with httpx.Client(timeout=10, headers=operator_headers(home), verify=authority.trust(home)) as client:
        try:
            if args.command == "undrain":
                row = drain.set_draining(client, state.url, args.worker, draining=False)
                console.print(f"{row.worker_id}: taking requests again")
                return 0
            done = drain.drain(client, state.url, [args.worker], args.timeout, lambda m: console.print(f"  • {m}"))
        except drain.DrainError as exc:
            err_console.print(f"[red]{escape(str(exc))}[/]")
            return 1
    if args.worker in done.refused or done.lost:
        err_console.print(f"[red]{escape(done.refused.get(args.worker) or done.lost)}[/]")
        return 1
    name = done.rows[args.worker].worker_id
    if done.left:
        console.print(f"{name}: still {done.left} in flight after {args.timeout:g} s (it stays draining)")
        return 1
    console.print(f"{name}: drained, idle (undo with: cluster undrain {args.worker})")
    return 0


def _drain_all(home: Path, timeout_s: float) -> None:
    """Before `down`: every worker takes no new requests, and those running get up to `timeout_s` to finish."""
    import httpx

    state = labstate.read_state(home) or local.running_state(home)
    if state is None or timeout_s <= 0:
        return
    with httpx.Client(timeout=5, headers=operator_headers(home), verify=authority.trust(home)) as client:
        addresses = [row.address for row in fetch_workers(client, state.url)]
        # an agent that does not answer has nothing to finish
        done = drain.drain(client, state.url, addresses, timeout_s, lambda m: console.print(f"  • {m}"))
    if done.lost:
        console.print(f"  • {escape(done.lost)}: stopping now")
        return
    if any(row.inflight for row in done.rows.values()):
        console.print(f"  • {'all finished' if not done.left else f'{done.left} still running: cut'}")


def _logs(args: argparse.Namespace) -> int:
    state = labstate.read_state(local.orchard_home())
    if state is not None and args.which not in ("router",):
        return asyncio.run(_lab_logs(state, args))
    path = local.orchard_home() / "logs" / f"{args.which}.log"
    if not path.exists():
        err_console.print(f"no log at {path}")
        return 1
    console.print(procs.tail(path, args.lines), markup=False)
    if args.follow:
        return _follow(path)
    return 0


def _follow(path: Path) -> int:
    """New lines as they are written, until Ctrl-C."""
    with path.open("rb") as log:
        log.seek(0, 2)
        try:
            while True:
                line = log.readline()
                if line:
                    console.print(line.decode(errors="replace").rstrip("\n"), markup=False)
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return 0


async def _lab_logs(state: labstate.LabState, args: argparse.Namespace) -> int:
    spec = state.spec
    try:
        host = spec.host(args.which)
    except KeyError:
        names = ", ".join(h.label for h in spec.hosts)
        err_console.print(f"no host '{args.which}' in the running lab (hosts: {names}; or 'router')")
        return 2
    try:
        conn = await remote.connect(host)
        async with conn:
            async for line in remote.follow_log(conn, host, args.lines, args.follow):
                console.print(line.rstrip("\n"), markup=False, highlight=False)
    except remote.RemoteError as exc:
        err_console.print(f"[red]{host.label}:[/] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        pass
    return 0
