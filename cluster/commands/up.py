"""`cluster up` (a hosts file, or the local cluster), `install`, `plan`, `units`: bringing a lab up."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import shlex
import sys
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from cluster.bringup import install, lab, labstate, local, remote, units
from cluster.bringup.sudo import Ask, Sudo
from cluster.commands import signals
from cluster.commands.output import console, err_console
from cluster.console.progress import HostSteps
from cluster.gateway import keys, store
from cluster.pki import authority
from cluster.placement import hostsfile, sizing
from cluster.placement.plan import PlacementError, plan, shared_network_warnings
from worker.shared.launch import ENGINE_KINDS, STALL_TIMEOUT_S, LaunchConfigError, key_value
from worker.shared.models import BUNDLED_NAME, ModelError


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="bring up a lab from a hosts file, or the local cluster without one")
    up.add_argument("file", nargs="?", type=Path, help="hosts file (TOML); none: this machine, bundled model")
    up.add_argument("--require-all", action="store_true", help="fail if any host cannot be brought up")
    up.add_argument(
        "--install-service",
        action="store_true",
        help="install each agent, and the head's router, as a launchd (macOS) / systemd (Linux) service: they "
        "start at boot (a lab's router stays a service on later runs; `cluster down` removes it)",
    )
    up.add_argument("--engine", choices=ENGINE_KINDS, default="vllm")
    up.add_argument("--model", default=BUNDLED_NAME, help="bundled name, local path or hub id")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--max-model-len", type=int, default=4096)
    up.add_argument("--kv-cache-gib", type=float, default=1.0)
    up.add_argument(
        "--ready-timeout",
        type=float,
        metavar="SECONDS",
        help="how long cluster up waits for the engines to serve (default: 900 s, or the hosts "
        "file's longest ready_timeout_s; an engine fetching its model's files is waited for)",
    )
    up.add_argument(
        "--stall-timeout",
        type=float,
        default=STALL_TIMEOUT_S,
        metavar="SECONDS",
        help="how long the engine may produce no token, with requests in flight, before it is restarted as hung "
        "(a long prompt's prefill counts: raise it for long prompts on a slow engine; hosts file: stall_timeout_s)",
    )
    up.add_argument("--sim-option", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    up.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        help="extra engine flag (repeat), e.g. --engine-arg=--enforce-eager",
    )
    up.add_argument(
        "--task",
        choices=("generate", "embed"),
        default="generate",
        help="embed: serve the model for /v1/embeddings (vllm's pooling runner)",
    )
    up.add_argument("--tls", action="store_true", help="HTTPS on the endpoint, with a certificate from the cluster CA")
    up.add_argument("--detach", action="store_true", help="leave it running in the background")
    up.add_argument("--ask", metavar="QUESTION", help="send one chat request once it is up and print the answer")
    up.set_defaults(func=_up)

    inst = sub.add_parser("install", help="make every host of a hosts file ready: Python, venv, this Orchard build")
    inst.add_argument("file", type=Path)
    inst.add_argument("--wheelhouse", type=Path, help="folder of wheels the hosts install from instead of PyPI")
    inst.add_argument("--extras", help="Orchard extras to install (default: mlx on macOS, none on Linux)")
    inst.add_argument(
        "--with-vllm-metal",
        action="store_true",
        help="macOS: also run vllm-metal's installer (~/.venv-vllm-metal) and add Ray to it",
    )
    inst.add_argument(
        "--python-archive",
        type=Path,
        metavar="TAR_GZ",
        help="for hosts with no Python >= 3.11: a python-build-standalone install_only archive for "
        "them (default: the wheelhouse's for each host's OS and CPU; else uv's wheel there brings "
        "one)",
    )
    inst.set_defaults(func=_install)
    plan_cmd = sub.add_parser("plan", help="show where each model of a hosts file would run; starts nothing")
    plan_cmd.add_argument("file", type=Path)
    plan_cmd.set_defaults(func=_plan)
    units_cmd = sub.add_parser("units", help="print a launchd plist or systemd unit that keeps a host's agent up")
    units_cmd.add_argument("file", type=Path)
    units_cmd.add_argument("host")
    units_cmd.add_argument("--kind", choices=("launchd", "systemd"), default="launchd")
    units_cmd.set_defaults(func=_units)


def _up(args: argparse.Namespace) -> int:
    if args.file is not None:
        return _lab_up(args)
    home = local.orchard_home()
    existing = local.running_state(home)
    if existing is not None:
        console.print(f"Orchard is already running at [bold]{existing.url}[/] (model {existing.model}).")
        _print_try(existing.url, existing.model)
        return 0
    config = local.LocalClusterConfig(
        engine=args.engine,
        model=args.model,
        host=args.host,
        port=args.port,
        max_model_len=args.max_model_len,
        kv_cache_gib=args.kv_cache_gib,
        ready_timeout_s=args.ready_timeout or 900.0,
        stall_timeout_s=args.stall_timeout,
        sim_options=tuple(args.sim_option),
        engine_args=tuple(args.engine_arg),
        home=home,
        tls=args.tls,
        task=args.task,
    )
    try:
        with console.status("starting Orchard…") as status:
            state = local.start(config, detached=args.detach, report=lambda m: _step(status, m))
    except (local.LocalClusterError, ModelError) as exc:
        err_console.print(f"[red]cluster up failed:[/] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        local.stop(home)
        err_console.print("interrupted; stopped everything that was started")
        return 130
    try:
        _announce(state, args.ask)
        if args.detach:
            console.print("Running in the background; stop it with: cluster down")
            return 0
        console.print("Serving. Press Ctrl-C (or run `cluster down`) to stop.")
        while not signals.STOP.wait(1.0):
            if not (state.ours(state.router_pid) and state.ours(state.agent_pid)):
                err_console.print(f"[red]a cluster process exited[/]; logs in {state.log_dir}")
                break
    except KeyboardInterrupt:
        if args.detach:
            return 130
    signals.hold()
    console.print("stopping…")
    local.stop(home)
    console.print("stopped.")
    return 0


def _announce(state: local.LocalState, question: str | None) -> None:
    console.print(
        f"[green]Orchard is up[/] at [bold]{state.url}[/] — model [bold]{state.model}[/] on the {state.engine} engine."
    )
    home = local.orchard_home()
    with store.opened(store.db_path(home)) as conn:
        people_keys = keys.key_count(conn)
    if people_keys:
        console.print(f"API keys are on ({people_keys} active): send `Authorization: Bearer KEY`.")
    else:
        console.print(
            "Open to anyone on this machine: no API key exists yet. `cluster keys create --team NAME` "
            "creates one, and from then on every request needs a key."
        )
    _print_try(state.url, state.model)
    if question:
        try:
            answer = local.ask(state.url, state.model, question, home)
            console.print(f"[bold]Q:[/] {question}\n[bold]A:[/] {answer['choices'][0]['message']['content']}")
        except Exception as exc:  # shown, not fatal: the cluster stays up for the user to look at
            err_console.print(f"[red]the test question failed:[/] {exc!r}")


def _step(status: object, message: str) -> None:
    console.print(f"  • {message}")


def _print_try(url: str, model: str) -> None:
    body = '{"model": "%s", "messages": [{"role": "user", "content": "What is the capital of France?"}]}' % model
    trust = ""
    if url.startswith("https:"):
        ca = authority.ca_folder(local.orchard_home()) / "ca.pem"
        console.print(f"HTTPS with a certificate from the cluster CA: clients trust {ca} (e.g. SSL_CERT_FILE={ca}).")
        trust = f"--cacert {shlex.quote(str(ca))} "
    console.print("Try it:")
    console.print(
        f"  curl -s {trust}{url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'", soft_wrap=True
    )


def load_spec(path: Path) -> hostsfile.ClusterSpec | None:
    """The hosts file, with the interpreter `cluster install` recorded for hosts that name none."""
    try:
        return install.with_installed(hostsfile.load(path), local.orchard_home())
    except hostsfile.HostsFileError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        return None


def _install(args: argparse.Namespace) -> int:
    try:
        spec = hostsfile.load(args.file)
    except hostsfile.HostsFileError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        return 2
    if args.wheelhouse is not None and not args.wheelhouse.is_dir():
        err_console.print(f"[red]error:[/] --wheelhouse {escape(str(args.wheelhouse))} is not a folder")
        return 2
    if args.python_archive is not None and not args.python_archive.is_file():
        err_console.print(f"[red]error:[/] --python-archive {escape(str(args.python_archive))} is not a file")
        return 2
    house = tuple(sorted(args.wheelhouse.glob("*.whl"))) if args.wheelhouse is not None else None
    archives = tuple(sorted(args.wheelhouse.glob("cpython-*-install_only*.tar.gz"))) if args.wheelhouse else ()
    options = install.InstallOptions(house, args.extras, args.with_vllm_metal, args.python_archive, archives)
    steps = HostSteps(console, [host.label for host in spec.hosts], "installed")
    try:
        with steps.live():
            rows = asyncio.run(install.install(spec, local.orchard_home(), options, steps.report))
    except install.InstallError as exc:
        err_console.print(f"[red]cluster install failed:[/] {escape(str(exc))}")
        return 1
    table = Table(title=f"Orchard install from {args.file}")
    for column in ("host", "python", "venv", "orchard", "engines"):
        table.add_column(column)
    for row in rows:
        state = row.orchard if not row.reason else f"{row.orchard}: {row.reason}"
        table.add_row(row.label, row.python, row.venv, state, row.engines)
    console.print(table)
    return 0 if all(row.orchard != "failed" for row in rows) else 1


def _lab_up(args: argparse.Namespace) -> int:
    spec = load_spec(args.file)
    if spec is None:
        return 2
    home = local.orchard_home()
    started = time.monotonic()
    steps = HostSteps(console, [host.label for host in spec.hosts], "ready")
    try:
        with steps.live():
            outcomes = asyncio.run(
                lab.up(
                    spec,
                    home,
                    require_all=args.require_all,
                    ready_timeout_s=args.ready_timeout,
                    report=steps.report,
                    install_service=args.install_service,
                    root=Sudo(asker(steps)),
                )
            )
    except (PlacementError, labstate.LabError) as exc:
        err_console.print(f"[red]cluster up failed:[/] {escape(str(exc))}")
        return 1
    table = Table(title=f"Orchard lab from {args.file} ({time.monotonic() - started:.1f}s)")
    for column in ("host", "address", "chip / OS", "memory", "engine", "models", "state"):
        table.add_column(column)
    for o in outcomes:
        memory = f"{o.memory_bytes / 2**30:.0f} GiB" if o.memory_bytes else "?"
        state = o.state if not o.reason else f"{o.state}: {o.reason}"
        table.add_row(
            o.label, o.address, f"{o.chip} / {o.os}" if o.chip else "?", memory, o.engine, ", ".join(o.models), state
        )
    console.print(table)
    applied = labstate.read_state(home)
    ready = [o for o in outcomes if o.state == "ready"]
    if applied is not None:
        console.print(f"endpoint: [bold]{applied.url}[/] ({len(ready)} of {len(outcomes)} hosts serving)")
    return 0 if ready else 1


def _plan(args: argparse.Namespace) -> int:
    spec = load_spec(args.file)
    if spec is None:
        return 2
    facts = {m.name: sizing.facts_for(m.source) for m in spec.models}
    try:
        assignments = plan(spec, facts)
    except PlacementError as exc:
        err_console.print(f"[red]cannot place:[/] {escape(str(exc))}")
        return 1
    table = Table(title=f"placement for {args.file}")
    for column in ("model", "as", "host", "engine", "holds", "usable", "why"):
        table.add_column(column)
    for a in assignments:
        kind = "replica"
        if a.group is not None:
            g = a.group
            kind = f"{g.name} {g.mode}/{g.backend} rank {a.rank} of {g.size}"
            if (span := g.layer_range(a.rank)) is not None:
                kind += f", layers {span[0]}-{span[1] - 1}"
        usable = "reported at up" if a.usable_gb is None else f"{a.usable_gb:,.1f} GB"
        holds = "?" if a.need_gb is None else f"{a.need_gb:,.1f} GB"
        engine = a.group.backend if a.group else a.host.engine
        table.add_row(a.model.name, kind, a.host.label, engine, holds, usable, a.why)
    console.print(table)
    for warning in shared_network_warnings(assignments):
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    return 0


def _units(args: argparse.Namespace) -> int:
    spec = load_spec(args.file)
    if spec is None:
        return 2
    assignment = next((a for a in plan(spec) if args.host in (a.host.label, a.host.address)), None)
    if assignment is None:
        err_console.print(f"no model is placed on host '{escape(args.host)}' in {args.file}")
        return 2
    host = assignment.host
    try:
        config = remote.agent_config(assignment, spec)
    except LaunchConfigError as exc:
        err_console.print(f"[red]cannot describe the agent on {escape(host.label)}:[/] {escape(str(exc))}")
        return 2
    program = remote.service_program(
        config, remote.python_of(host), host.orchard_dir, args.kind, remote.config_hash(config)
    )
    if args.kind == "launchd":
        user = host.user or getpass.getuser()  # the SSH user: the LaunchDaemon runs as that user
        sys.stdout.write(units.launchd_plist(program, host.orchard_dir, user=user).decode())
    else:
        sys.stdout.write(units.systemd_unit(program, host.orchard_dir))
    return 0


def asker(steps: HostSteps | None) -> Ask | None:
    """A host's sudo password, asked on this terminal (the live view paused meanwhile); None without a terminal."""
    if not sys.stdin.isatty():
        return None

    def ask(prompt: str) -> str:
        if steps is None:
            return getpass.getpass(prompt)
        with steps.paused():
            return getpass.getpass(prompt)

    return ask
