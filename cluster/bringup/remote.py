"""Talking to one lab host over SSH (asyncssh): preflight, start/stop the agent daemon, read its log.

Every remote call has a deadline; a host that cannot be reached is reported with the reason, never retried
without bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncssh
from pydantic import BaseModel, ValidationError

from cluster.bringup import units
from cluster.placement.hostsfile import ClusterSpec, HostSpec, ModelSpec
from cluster.placement.plan import Assignment, GroupPlan
from worker.shared import build
from worker.shared.daemon import (
    SERVICE_MARK,
    AgentStatus,
    GroupCheckReply,
    HostFactsReply,
    MlxCheckReply,
    StartReply,
    StopReply,
)
from worker.shared.launch import AgentConfig, GroupRole
from worker.shared.store.folder import slug
from worker.shared.tls import CA_FILE, IDENTITY_FILE

CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
R = TypeVar("R", bound=BaseModel)


class RemoteError(Exception):
    """One host failed a step; the message is what the operator needs to fix."""


def connect_options(host: HostSpec) -> dict[str, Any]:
    """asyncssh options for a host (pure). Without known_hosts, asyncssh reads ~/.ssh/known_hosts."""
    options: dict[str, Any] = {"port": host.port, "connect_timeout": CONNECT_TIMEOUT_S}
    if not host.verify_host_key:
        options["known_hosts"] = None
    elif host.known_hosts:
        options["known_hosts"] = os.path.expanduser(host.known_hosts)
    if host.user:
        options["username"] = host.user
    if host.identity_file:
        options["client_keys"] = [os.path.expanduser(host.identity_file)]
    return options


async def connect(host: HostSpec) -> asyncssh.SSHClientConnection:
    options = connect_options(host)
    try:
        return await asyncssh.connect(host.address, **options)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise RemoteError(f"unreachable over SSH ({host.address}:{host.port}): {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def python_of(host: HostSpec) -> str:
    return host.python or "python3"


def posix(script: str) -> str:
    """Run a script under /bin/sh whatever the login shell is (zsh on a Mac does not split `$S` into words
    and aborts on a glob that matches nothing)."""
    return "/bin/sh -c " + shlex.quote(script)


def expand_home(path: str, home: str) -> str:
    """A host path with a leading `~` made absolute with that host's $HOME (launchd and pip do not expand it)."""
    return home + path[1:] if path == "~" or path.startswith("~/") else path


def shell_path(path: str) -> str:
    """A path for a remote shell command line: quoted, with a leading `~/` left for the shell to expand."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (shlex.quote(path[1:]) if len(path) > 1 else "")
    return shlex.quote(path)


async def run_daemon(conn: asyncssh.SSHClientConnection, host: HostSpec, args: list[str], reply: type[R]) -> R:
    """Run `python -m worker.daemon ARGS` on the host and parse its one JSON line as `reply`."""
    command = " ".join([shell_path(python_of(host)), *(shlex.quote(part) for part in ["-m", "worker.daemon", *args])])
    try:
        result = await asyncio.wait_for(conn.run(command, check=False), COMMAND_TIMEOUT_S)
    except TimeoutError as exc:
        raise RemoteError(f"`{args[0]}` did not finish within {COMMAND_TIMEOUT_S:.0f}s") from exc
    if result.exit_status != 0:
        stderr = str(result.stderr or "").strip().splitlines()
        detail = stderr[-1] if stderr else f"exit status {result.exit_status}"
        if result.exit_status == 127 or "No module named" in detail:
            detail += f" (is Orchard installed at python = {python_of(host)!r}?)"
        raise RemoteError(f"`worker.daemon {args[0]}` failed: {detail}")
    lines = str(result.stdout).strip().splitlines()
    try:
        return reply.model_validate_json(lines[-1])
    except (ValidationError, IndexError) as exc:
        raise RemoteError(f"`worker.daemon {args[0]}` printed no {reply.__name__}: {result.stdout!r}") from exc


async def preflight(
    conn: asyncssh.SSHClientConnection, host: HostSpec, sources: tuple[str, ...] = ()
) -> HostFactsReply:
    """The host's facts (and those of each model source's files there), refused unless it runs this head's build."""
    models = [f"--model={source}" for source in sources]
    facts = await run_daemon(conn, host, ["facts", *_engine_python(host), *models], HostFactsReply)
    if facts.build != build.digest():
        theirs = f"{facts.orchard_version} (build {facts.build})" if facts.build else "an older Orchard"
        raise RemoteError(
            f"{facts.python} runs {theirs}, not this head's {build.describe()}: run `cluster "
            "install` with this hosts file to install the head's build there"
        )
    return facts


def engine_problem(facts: HostFactsReply, engine: str) -> str | None:
    """Why the host cannot run the engine it was assigned (its own, or its shard group's backend), if it cannot."""
    if facts.engines.get(engine):
        return None
    hint = {
        "vllm": "on a Mac: `cluster install --with-vllm-metal`; on Linux: `cluster install --extras vllm`",
        "mlx": "`cluster install --extras mlx`",
    }.get(engine, "")
    where = f"engine '{engine}' is not available on this host ({facts.python})"
    return f"{where}: {hint}" if hint else where


async def group_check(conn: asyncssh.SSHClientConnection, host: HostSpec) -> GroupCheckReply:
    address = ["--group-address", host.group_address or host.address]
    return await run_daemon(conn, host, ["groupcheck", *_engine_python(host), *address], GroupCheckReply)


async def mlx_check(conn: asyncssh.SSHClientConnection, host: HostSpec, transport: str) -> MlxCheckReply:
    args = [
        "mlxcheck",
        "--dir",
        host.orchard_dir,
        "--group-address",
        host.group_address or host.address,
        "--group-port",
        str(host.group_port),
        "--transport",
        transport,
    ]
    return await run_daemon(conn, host, args, MlxCheckReply)


def _engine_python(host: HostSpec) -> list[str]:
    return ["--engine-python", host.engine_python] if host.engine_python else []


def agent_config(
    assignment: Assignment, spec: ClusterSpec, folder: str | None = None, shared: bool = False
) -> AgentConfig:
    """The agent's configuration on its host; `folder`: where the store put the model there; `shared`: the host
    offers on-demand models too, so its engine takes its own memory share only. A shard-group rank also gets every
    rank's group endpoint and agent address, so its agent can write MLX's hostfile and watch the group. Raises
    LaunchConfigError."""
    host, model = assignment.host, assignment.model
    group = _group_role(assignment.group, assignment.rank, spec) if assignment.group else None
    return AgentConfig.checked(
        **_model_fields(host, model, folder),
        listen=f"0.0.0.0:{host.agent_port}",
        engine=group.backend if group else host.engine,
        worker_id=host.label,
        log_dir=f"{host.orchard_dir.rstrip('/')}/logs",
        group=group,
        need_gb=(assignment.need_gb or 0.0) if shared else 0.0,
    )


def vacant_config(host: HostSpec) -> AgentConfig:
    """A host with no pinned model that offers on-demand ones: its agent runs no engine of its own."""
    return AgentConfig.checked(
        listen=f"0.0.0.0:{host.agent_port}",
        engine="none",
        worker_id=host.label,
        log_dir=f"{host.orchard_dir.rstrip('/')}/logs",
        tls_dir=tls_dir(host),
        engine_python=host.engine_python,
    )


def on_demand_config(host: HostSpec, model: ModelSpec, folder: str | None, need_gb: float) -> AgentConfig:
    """An on-demand model's child agent on a host (its host agent gives it a port when it starts it)."""
    return AgentConfig.checked(
        **_model_fields(host, model, folder),
        listen=f"0.0.0.0:{host.agent_port}",  # the host agent's --listen, given after, decides
        engine=host.engine,
        worker_id=f"{host.label}:{model.name}",
        log_dir=f"{host.orchard_dir.rstrip('/')}/logs/{slug(model.name)}",
        need_gb=need_gb,
    )


def _model_fields(host: HostSpec, model: ModelSpec, folder: str | None) -> dict[str, Any]:
    sim_options = host.sim_options.items()  # the hosts file allows numbers; the command line carries text
    return {
        "model": folder or model.source,
        "served_name": model.name,
        "max_model_len": model.max_model_len,
        "engine_args": tuple(model.engine_args),
        "sim_options": tuple(sorted((k, str(v)) for k, v in sim_options)),
        "engine_python": host.engine_python,
        "ready_timeout_s": model.ready_timeout_s,
        "stall_timeout_s": model.stall_timeout_s,
        "tool_parser": model.tool_parser,
        "reasoning_parser": model.reasoning_parser,
        "tls_dir": tls_dir(host),
        "task": model.task,
    }


def tls_dir(host: HostSpec) -> str:
    """The agent's TLS folder on its host (worker/shared/tls.py)."""
    return f"{host.orchard_dir.rstrip('/')}/tls"


async def installed_certificates(conn: asyncssh.SSHClientConnection, host: HostSpec) -> bytes:
    """The CA certificate and the agent's certificate its host holds (PEM; empty if none): never the key."""
    folder = shell_path(tls_dir(host))
    script = (
        f"cat {folder}/{CA_FILE} {folder}/{IDENTITY_FILE} 2>/dev/null | "
        "sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p'; true"
    )
    return (await shell(conn, posix(script))).encode()


async def install_identity(conn: asyncssh.SSHClientConnection, host: HostSpec, ca: bytes, identity: bytes) -> None:
    """Copy the agent's TLS folder: each file private from creation, renamed into place (the running agent reads
    it at its next connection)."""
    folder = shell_path(tls_dir(host))
    for name, data in ((CA_FILE, ca), (IDENTITY_FILE, identity)):
        staged = f"{folder}/.{name}.tmp"
        script = f"umask 077 && mkdir -p {folder} && cat > {staged} && mv {staged} {folder}/{name}"
        await shell(conn, posix(script), data.decode())


def _group_role(group: GroupPlan, rank: int, spec: ClusterSpec) -> GroupRole:
    members = [spec.host(label) for label in group.hosts]
    rdma: tuple[tuple[str | None, ...], ...] = ()
    if group.transport == "jaccl":  # MLX_IBV_DEVICES: row i, column j = host i's device towards host j
        rdma = tuple(
            tuple(None if peer is member else member.rdma_devices.get(peer.label, "") for peer in members)
            for member in members
        )
    return GroupRole.checked(
        name=group.name,
        rank=rank,
        mode=group.mode,
        backend=group.backend,
        transport=group.transport,
        members=tuple(f"{m.group_address or m.address}:{m.group_port}" for m in members),
        peers=tuple(f"{m.address}:{m.agent_port}" for m in members),
        layers=group.layers or (),
        rdma=rdma,
    )


def config_hash(config: AgentConfig) -> str:
    """What the running agent must match to be kept: its command line and Orchard's build (an upgrade restarts
    agents too, drained first)."""
    return hashlib.sha256("\0".join([*config.to_argv(), build.digest()]).encode()).hexdigest()[:16]


async def start_agent(conn: asyncssh.SSHClientConnection, host: HostSpec, config: AgentConfig) -> StartReply:
    args = ["start", "--dir", host.orchard_dir, "--hash", config_hash(config), "--", *config.to_argv()]
    return await run_daemon(conn, host, args, StartReply)


async def agent_status(conn: asyncssh.SSHClientConnection, host: HostSpec) -> AgentStatus:
    return await run_daemon(conn, host, ["status", "--dir", host.orchard_dir], AgentStatus)


async def stop_agent(conn: asyncssh.SSHClientConnection, host: HostSpec) -> StopReply:
    return await run_daemon(conn, host, ["stop", "--dir", host.orchard_dir], StopReply)


def log_command(host: HostSpec, lines: int, follow: bool) -> str:
    """`tail` of the agent's log, the path quoted (whatever the hosts file holds, it is one argument)."""
    path = shell_path(f"{host.orchard_dir.rstrip('/')}/logs/agent.log")
    return f"tail -n {int(lines)} {'-F ' if follow else ''}{path}"


async def follow_log(
    conn: asyncssh.SSHClientConnection, host: HostSpec, lines: int, follow: bool
) -> AsyncIterator[str]:
    async with conn.create_process(log_command(host, lines, follow)) as process:
        async for line in process.stdout:
            yield str(line)


async def shell(
    conn: asyncssh.SSHClientConnection, command: str, stdin: str | None = None, timeout_s: float = COMMAND_TIMEOUT_S
) -> str:
    try:
        # no stdin: closed at once, so a script that reads it sees the end instead of waiting
        source = {"input": stdin} if stdin is not None else {"stdin": asyncssh.DEVNULL}
        result = await asyncio.wait_for(conn.run(command, check=False, **source), timeout_s)
    except TimeoutError as exc:
        raise RemoteError(f"`{command[:60]}` did not finish within {timeout_s:.0f}s") from exc
    if result.exit_status != 0:
        lines = str(result.stderr or result.stdout or "").strip().splitlines()
        raise RemoteError(f"`{command[:80]}` failed: {lines[-1] if lines else f'exit {result.exit_status}'}")
    return str(result.stdout)


async def host_os(conn: asyncssh.SSHClientConnection) -> str:
    """ "darwin" or "linux", as the host's own `uname -s` says: what decides its service manager and shell tools."""
    return "darwin" if (await shell(conn, "uname -s")).strip() == "Darwin" else "linux"


def service_program(config: AgentConfig, python: str, folder: str, manager: str, applied: str) -> list[str]:
    """A service's program: `worker.daemon run` records the agent (pid, start time, the hash of the configuration
    applied, as `start` would) and becomes it."""
    return [
        python,
        "-m",
        "worker.daemon",
        "run",
        "--dir",
        folder,
        "--hash",
        applied,
        "--service",
        manager,
        "--",
        *config.to_argv(),
    ]


RootStdin = Callable[[], Awaitable[str | None]]  # what a root script reads on stdin (sudo.py); asked when needed


async def _no_password() -> str | None:
    return None


async def install_service(
    conn: asyncssh.SSHClientConnection, host: HostSpec, config: AgentConfig, root: RootStdin = _no_password
) -> StartReply:
    """Install the agent as a LaunchDaemon running as the SSH user (macOS: starts at boot with nobody logged in;
    root through `root_stdin`, see sudo.py) or a systemd user unit (Linux) and load it, so it survives reboots.
    An agent its service already runs with this configuration is left alone (`changed` false); a detached one
    is stopped first."""
    current = await agent_status(conn, host)
    platform = await host_os(conn)
    manager = "launchd" if platform == "darwin" else "systemd"
    if current.status == "running" and current.hash == config_hash(config) and current.service == manager:
        return StartReply(status="running", pid=current.pid, hash=current.hash, changed=False)
    home = (await shell(conn, 'printf %s "$HOME"')).strip()
    folder = expand_home(host.orchard_dir, home)
    local = AgentConfig.checked(**(config.model_dump() | {"log_dir": f"{folder}/logs", "tls_dir": f"{folder}/tls"}))
    program = service_program(local, expand_home(python_of(host), home), folder, manager, config_hash(config))
    if current.service != manager:  # a detached agent; the service's own is reloaded below
        await stop_agent(conn, host)
    if platform == "darwin":
        user = (await shell(conn, "id -un")).strip()
        path = f"{folder}/{units.LAUNCHD_LABEL}.plist"  # staged; the load script installs it as root's
        text = units.launchd_plist(program, folder, {"HOME": home}, user=user).decode()
        load = posix(_old_launch_agent_gone() + units.launchd_load_script(path))
    else:
        path = f"{home}/.config/systemd/user/{units.SYSTEMD_NAME}"
        text = units.systemd_unit(program, folder)
        load = (
            f"systemctl --user daemon-reload && systemctl --user restart {units.SYSTEMD_NAME} && "
            f"systemctl --user enable {units.SYSTEMD_NAME}"
        )
    directory = path.rsplit("/", 1)[0]
    await shell(
        conn, f"mkdir -p {shlex.quote(directory)} {shlex.quote(folder)}/logs && cat > {shlex.quote(path)}", text
    )
    stdin = await root() if platform == "darwin" else None
    await shell(conn, load, stdin, timeout_s=units.EXIT_TIMEOUT_S + 60)  # launchd may take that long to let go
    return StartReply(status="started", hash=config_hash(config), changed=True)


def _old_launch_agent_gone() -> str:
    """Orchard used to install a LaunchAgent; one left from then would start a second agent at login."""
    return (
        f"launchctl bootout gui/$(id -u)/{units.LAUNCHD_LABEL} >/dev/null 2>&1; "
        f'rm -f "$HOME/Library/LaunchAgents/{units.LAUNCHD_LABEL}.plist"; '
    )


async def uninstall_service(conn: asyncssh.SSHClientConnection, host: HostSpec, root: RootStdin = _no_password) -> bool:
    """Unload and remove an agent service installed by install_service, if any. True if one was there. Root (and
    so a password) is asked for only when a LaunchDaemon is there."""
    await shell(conn, f"rm -f {shell_path(host.orchard_dir.rstrip('/') + '/' + SERVICE_MARK)}")
    if await host_os(conn) == "darwin":
        had_agent = await shell(
            conn,
            f'[ -f "$HOME/Library/LaunchAgents/{units.LAUNCHD_LABEL}.plist" ] && echo 1; '
            + _old_launch_agent_gone()
            + "true",
        )
        daemon = shlex.quote(f"{units.LAUNCH_DAEMONS}/{units.LAUNCHD_LABEL}.plist")
        if "1" not in await shell(conn, f"[ -f {daemon} ] && echo 1 || echo 0"):
            return had_agent.strip() == "1"
        unloaded = await shell(conn, posix(units.launchd_unload_script()), await root())
        return unloaded.strip() == "1" or had_agent.strip() == "1"
    script = (
        f'u="$HOME/.config/systemd/user/{units.SYSTEMD_NAME}"; found=0; '
        f'if [ -f "$u" ]; then systemctl --user disable --now {units.SYSTEMD_NAME} 2>/dev/null; '
        'rm -f "$u"; found=1; fi; '
        "echo $found"
    )
    return (await shell(conn, script)).strip() == "1"
