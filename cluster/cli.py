"""`cluster`: the operator CLI.

cluster up [--engine vllm|sim] [--port 8000] [--detach] [--ask "question"]
cluster install HOSTS | up HOSTS | plan HOSTS | units HOSTS HOST
cluster down | status [--watch|--json] | logs [agent|router|engine] | models prepare
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.bringup import certs, drain, install, lab, labstate, local, remote, units
from cluster.bringup.fleet import fetch_workers, read_workers
from cluster.bringup.sudo import Ask, Sudo
from cluster.console import status
from cluster.console.progress import HostSteps
from cluster.gateway import admin, keys, store
from cluster.gateway.keys import operator_headers
from cluster.pki import authority, pins
from cluster.placement import hostsfile, sizing
from cluster.placement.plan import PlacementError, plan, shared_network_warnings
from worker.shared import procs
from worker.shared.launch import ENGINE_KINDS, LaunchConfigError, key_value
from worker.shared.models import BUNDLED_NAME, ModelError, bundled_dir, is_bundled, prepare_bundled

# No hard line breaks in messages; tables piped to a file or a log get room instead of an 80-column wrap.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


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
        sim_options=tuple(args.sim_option),
        engine_args=tuple(args.engine_arg),
        home=home,
        tls=args.tls,
        task=args.task,
    )
    stop_requested = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop_requested.set()
        raise KeyboardInterrupt

    # Our own handlers for both: a shell that starts jobs with SIGINT ignored must not make Ctrl-C a no-op.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
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
        while not stop_requested.wait(1.0):
            if not (state.ours(state.router_pid) and state.ours(state.agent_pid)):
                err_console.print(f"[red]a cluster process exited[/]; logs in {state.log_dir}")
                break
    except KeyboardInterrupt:
        if args.detach:
            return 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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


def _load_spec(path: Path) -> hostsfile.ClusterSpec | None:
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
    spec = _load_spec(args.file)
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
                    root=Sudo(_asker(steps)),
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
    spec = _load_spec(args.file)
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
    spec = _load_spec(args.file)
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


def _asker(steps: HostSteps | None) -> Ask | None:
    """A host's sudo password, asked on this terminal (the live view paused meanwhile); None without a terminal."""
    if not sys.stdin.isatty():
        return None

    def ask(prompt: str) -> str:
        if steps is None:
            return getpass.getpass(prompt)
        with steps.paused():
            return getpass.getpass(prompt)

    return ask


def _down(args: argparse.Namespace) -> int:
    home = local.orchard_home()
    _drain_all(home, args.drain_timeout)
    if asyncio.run(lab.down(home, report=lambda m: console.print(f"  • {m}"), root=Sudo(_asker(None)))):
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
            # Ctrl-C ends it even where the shell started it with SIGINT ignored (a background job, nohup).
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                status.watch(console, lambda: read_workers(client, state.url), state.url)
            except KeyboardInterrupt:
                return 0
        try:
            rows = read_workers(client, state.url)
        except (httpx.HTTPError, ValidationError) as exc:
            reason = escape(str(exc).splitlines()[0])
            err_console.print(
                f"[red]the router at {state.url} did not answer as expected:[/] {reason} (cluster logs router)"
            )
            return 1
    if args.json:
        print(status.as_json(rows))
        return 0
    console.print(status.table(rows, state.url))
    _print_expiry(home)
    return 0


def _drain(args: argparse.Namespace) -> int:
    """Stop new work on one worker and wait (bounded) until what it runs has finished; or resume it."""
    import httpx

    home = local.orchard_home()
    if (state := _running(home)) is None:
        return 1
    draining = args.command == "drain"
    with httpx.Client(timeout=10, headers=operator_headers(home), verify=authority.trust(home)) as client:
        try:
            row = drain.set_draining(client, state.url, args.worker, draining)
        except drain.DrainError as exc:
            err_console.print(f"[red]{escape(str(exc))}[/]")
            return 1
        if not draining:
            console.print(f"{row.worker_id}: taking requests again")
            return 0
        console.print(f"{row.worker_id}: draining, no new requests; waiting for {row.inflight} in flight")
        try:
            left = drain.wait_idle(client, state.url, {row.address}, args.timeout)
        except drain.DrainError as exc:
            err_console.print(f"[red]{escape(str(exc))}[/]")
            return 1
    if left:
        console.print(f"{row.worker_id}: still {left} in flight after {args.timeout:g} s (it stays draining)")
        return 1
    console.print(f"{row.worker_id}: drained, idle (undo with: cluster undrain {args.worker})")
    return 0


def _drain_all(home: Path, timeout_s: float) -> None:
    """Before `down`: every worker takes no new requests, and those running get up to `timeout_s` to finish."""
    import httpx

    state = labstate.read_state(home) or local.running_state(home)
    if state is None or timeout_s <= 0:
        return
    with httpx.Client(timeout=5, headers=operator_headers(home), verify=authority.trust(home)) as client:
        rows = fetch_workers(client, state.url)
        busy = sum(r.inflight for r in rows)
        for row in rows:
            try:
                drain.set_draining(client, state.url, row.address)
            except drain.DrainError:
                continue  # an agent that does not answer has nothing to finish
        if busy:
            console.print(f"  • draining: waiting up to {timeout_s:g} s for {busy} request(s) in flight")
            try:
                left = drain.wait_idle(client, state.url, {r.address for r in rows}, timeout_s)
            except drain.DrainError as exc:
                console.print(f"  • {escape(str(exc))}: stopping now")
                return
            console.print(f"  • {'all finished' if not left else f'{left} still running: cut'}")


def _logs(args: argparse.Namespace) -> int:
    state = labstate.read_state(local.orchard_home())
    if state is not None and args.which not in ("router",):
        return asyncio.run(_lab_logs(state, args))
    path = local.orchard_home() / "logs" / f"{args.which}.log"
    if not path.exists():
        err_console.print(f"no log at {path}")
        return 1
    console.print(procs.tail(path, args.lines), markup=False)
    return 0


async def _lab_logs(state: labstate.LabState, args: argparse.Namespace) -> int:
    spec = hostsfile.ClusterSpec.model_validate(state.spec)
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


def _certs(args: argparse.Namespace) -> int:
    """init: the CA and the head's identities; rotate: new certificates everywhere, no call dropped; show."""
    home = local.orchard_home()
    try:
        if args.certs_command == "init":
            issued = certs.local_identities(home)
            console.print(f"cluster CA at {authority.ca_folder(home)}; issued: {', '.join(issued) or 'nothing new'}")
        elif args.certs_command == "rotate":
            if not _rotate(home):
                return 1
        elif args.certs_command == "revoke":
            revoked = asyncio.run(lab.revoke_certificate(home, args.host, report=lambda m: console.print(f"  • {m}")))
            if not revoked:
                return 1
        elif args.certs_command == "issue":
            now = authority.now_utc()
            ca = authority.load_or_create(home, now)
            names = tuple(dict.fromkeys([*args.address, args.name]))
            authority.write_identity(args.out, ca, authority.issue(ca, f"orchard agent {args.name}", names, now))
            console.print(
                f"{args.out}: ca.pem and identity.pem (0600) for {', '.join(names)}; copy the folder to "
                "the host and start its agent with --tls-dir",
                highlight=False,
            )
            return 0
        _print_expiry(home)
    except (authority.AuthorityError, labstate.LabError) as exc:
        err_console.print(f"[red]{escape(str(exc))}[/]")
        return 1
    return 0


def _rotate(home: Path) -> bool:
    if certs.renew_endpoint(home):
        console.print("new endpoint certificate from the cluster CA (served to new connections)")
    if labstate.read_state(home) is not None:
        missed = asyncio.run(lab.rotate_certificates(home, report=lambda m: console.print(f"  • {m}")))
        if missed:
            err_console.print(
                f"[red]not rotated on {', '.join(missed)}:[/] their old certificates stay valid until "
                "they expire; run `cluster certs rotate` again once they are reachable"
            )
        return not missed
    certs.local_identities(home, renew=True)
    console.print("new certificates for the router and the local agent (used for their next connections)")
    return True


def _certificate_host(address: str) -> str:
    """`--address`: what the certificate names, the host without the port the router dials."""
    try:
        return authority.host_of(address)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print_expiry(home: Path) -> None:
    state = labstate.read_state(home)
    agents = [h.label for h in hostsfile.ClusterSpec.model_validate(state.spec).hosts] if state else [certs.LOCAL_AGENT]
    now = authority.now_utc()
    try:
        line = "; ".join(f"{e.who} {e.text(now)}" for e in certs.expiries(home, agents))
    except pins.PinsError as exc:
        line = str(exc)
    console.print(f"certificates until: {line}", highlight=False)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cluster", description="Orchard: one OpenAI endpoint for a Mac lab")
    sub = parser.add_subparsers(dest="command", required=True)

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

    certs_cmd = sub.add_parser("certs", help="the cluster's certificate authority (mutual TLS router ↔ agents)")
    certs_sub = certs_cmd.add_subparsers(dest="certs_command", required=True)
    certs_sub.add_parser("init", help="create the CA and the head's certificates (cluster up does it when needed)")
    certs_sub.add_parser("rotate", help="issue new certificates to the router and every agent; drops no request")
    certs_sub.add_parser("show", help="when each certificate expires")
    revoke = certs_sub.add_parser("revoke", help="end a lab agent's certificate now (a leaked key); issue a new one")
    revoke.add_argument("host", help="the host's name (or address) in the running lab's hosts file")
    issue = certs_sub.add_parser("issue", help="an identity for an agent run by hand (orchard-worker --tls-dir)")
    issue.add_argument("name", help="the host's name")
    issue.add_argument(
        "--address",
        action="append",
        default=[],
        required=True,
        type=_certificate_host,
        help="an address the router dials it by: host, host:port, [IPv6]:port (repeat)",
    )
    issue.add_argument("--out", type=Path, required=True, help="folder to write ca.pem and identity.pem into")
    certs_cmd.set_defaults(func=_certs)
    admin.add_commands(sub, local.orchard_home, console)
    models = sub.add_parser("models", help="model cache").add_subparsers(dest="models_command", required=True)
    prepare = models.add_parser("prepare", help="convert the bundled model into the cache (once)")
    prepare.add_argument("name", nargs="?", default=BUNDLED_NAME)
    prepare.set_defaults(func=_models_prepare)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
