"""The lab's router on the head: its configuration from the hosts file, started, kept, or handed over to a new one
(detached under Orchard's keeper, or a service of the head's service manager), and restarted on request."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import asyncssh

from cluster.bringup import certs, remote, rollout, units
from cluster.bringup.fleet import Report
from cluster.bringup.labstate import LabError, LabState, read_state, state_path
from cluster.bringup.sudo import Sudo
from cluster.gateway.store import db_path
from cluster.pki import authority
from cluster.placement.hostsfile import ClusterSpec
from cluster.state import records
from worker.shared import build, procs
from worker.shared.launch import RouterConfig


def router_config(spec: ClusterSpec, workers: list[str], home: Path, demand: Path | None = None) -> RouterConfig:
    """`demand`: the on-demand catalog `cluster up` wrote (ondemand.py), if the lab offers any."""
    policies = tuple((m.name, m.policy) for m in spec.models if m.policy)
    router = spec.router
    cert, key = _endpoint_files(spec, home)
    return RouterConfig.checked(
        listen=f"{router.host}:{router.port}",
        workers=tuple(workers),
        model_policies=policies,
        models=tuple(m.name for m in spec.models),
        gateway_db=str(db_path(home)),
        no_auth=router.no_auth,
        max_queue=router.max_queue,
        log_format=router.log_format,
        handover=str(home / "router.sock"),
        tls_dir=str(authority.tls_folder(home, certs.ROUTER)),
        ca_dir=str(authority.ca_folder(home)),
        tls_cert=cert,
        tls_key=key,
        demand=str(demand) if demand else None,
    )


def _endpoint_files(spec: ClusterSpec, home: Path) -> tuple[str | None, str | None]:
    """HTTPS for the endpoint: the operator's files, the cluster CA's certificate, or none."""
    router = spec.router
    if router.tls_cert and router.tls_key:
        return str(Path(router.tls_cert).expanduser()), str(Path(router.tls_key).expanduser())
    if router.tls:
        return str(certs.endpoint_path(home)), str(certs.endpoint_path(home))
    return None, None


def ensure_router(
    spec: ClusterSpec,
    home: Path,
    workers: list[str],
    report: Report,
    service: units.RouterService,
    install_service: bool = False,
    demand: Path | None = None,
) -> str:
    config = router_config(spec, workers, home, demand)
    previous = read_state(home)
    pid = previous.router_now(service) if previous else None
    as_service = install_service or bool(previous and previous.router_slot)  # a service router stays one
    if as_service and (why := service.unavailable()):
        report(
            f"router: kept by Orchard's keeper, not by a service manager: {why}; it does not come back by "
            "itself after this machine reboots"
        )
        as_service = False
    manager = service if as_service else None
    slot: Literal["", "a", "b"] = ""
    same = previous is not None and (previous.router, previous.build, bool(previous.router_slot)) == (
        config,
        build.digest(),
        as_service,
    )
    if previous and pid and same:
        report(f"router: running (pid {pid}) at {config.local_url}")
        slot = previous.router_slot
    elif previous and pid and previous.router.handover:
        pid, slot = _hand_over(pid, previous.router_slot, config, home, report, manager)
    else:
        restarted = bool(previous and pid)
        if restarted and pid:  # an older router that cannot hand its socket over
            procs.terminate_tree(pid)
        if manager:  # a service router that is down (or the first one) starts in its slot
            slot = (previous.router_slot if previous else "") or "a"
        try:
            pid = rollout.start_router(config, home, manager, slot or "a")
        except rollout.RolloutError as exc:
            raise LabError(str(exc)) from None
        how = f" by {service.manager} ({service.name(slot or 'a')})" if manager else ""
        report(f"router: {'restarted' if restarted else 'started'}{how} (pid {pid}) at {config.local_url}")
    state = LabState(
        spec=spec,
        router_pid=pid,
        router=config,
        url=config.local_url,
        build=build.digest(),
        router_started=procs.started_at(pid),
        router_slot=slot,
    )
    records.write(state_path(home), state)
    return config.local_url


def _hand_over(
    old_pid: int,
    old_slot: Literal["", "a", "b"],
    config: RouterConfig,
    home: Path,
    report: Report,
    service: units.RouterService | None,
) -> tuple[int, Literal["", "a", "b"]]:
    """rollout.hand_over; to a service's other slot when `service`: the new router is started there by the
    service manager and takes the socket over, and only then is the old slot retired (stopped without waiting
    for its streams, no longer started at boot), so a planned restart refuses nothing and one slot starts at
    boot. The new router's pid and slot. Raises LabError (the old router serves on)."""
    if service is None:
        try:
            return rollout.hand_over(old_pid, config, home, report), ""
        except rollout.RolloutError as exc:
            raise LabError(str(exc)) from None
    new = units.other_slot(old_slot)
    try:
        pid = rollout.hand_over(old_pid, config, home, report, lambda: rollout.start_router(config, home, service, new))
    except rollout.RolloutError as exc:
        _retire(service, new, report)  # else launchd would start the stopped new router again
        raise LabError(str(exc)) from None
    if old_slot:
        _retire(service, old_slot, report)
    return pid, new


def _retire(service: units.RouterService, slot: units.Slot, report: Report) -> None:
    try:
        service.retire(slot)
    except units.ServiceError as exc:
        report(f"router: {service.name(slot)} was not unloaded ({exc}); `cluster down` removes it")


def restart_router(home: Path, report: Report, service: units.RouterService | None = None) -> None:
    """A planned restart of the lab's router (after an upgrade, or to clear its state): refuses no request."""
    service = service or units.RouterService.here(home, say=report)
    state = read_state(home)
    pid = state.router_now(service) if state else None
    if state is None or pid is None:
        raise LabError("no lab router is running (start the lab with: cluster up hosts.toml)")
    manager = service if state.router_slot else None
    pid, slot = _hand_over(pid, state.router_slot, state.router, home, report, manager)
    update = {"router_pid": pid, "build": build.digest(), "router_started": procs.started_at(pid), "router_slot": slot}
    records.write(state_path(home), state.model_copy(update=update))


def head_service(home: Path, root: Sudo | None, report: Report) -> units.RouterService:
    """This machine's service manager for the router (called on the event loop). On a Mac root installs its
    LaunchDaemon, asked for like a host's (`root`: one password for the run), from the worker thread that
    starts the router while the loop runs."""
    loop = asyncio.get_running_loop()

    def root_stdin() -> str | None:
        if root is None:
            return None
        here = cast(asyncssh.SSHClientConnection, _ThisMachine())  # Sudo only `run`s shell commands on it
        try:
            return asyncio.run_coroutine_threadsafe(root.stdin_for(here, "this machine"), loop).result()
        except remote.RemoteError as exc:
            raise units.ServiceError(str(exc)) from None

    return units.RouterService.here(home, root_stdin=root_stdin, say=report)


@dataclass(frozen=True)
class _Ran:
    exit_status: int
    stdout: str
    stderr: str


class _ThisMachine:
    """What Sudo asks of an SSH connection, on the head itself: run a shell command with `input` on stdin."""

    async def run(self, command: str, check: bool = False, **source: Any) -> _Ran:
        stdin: dict[str, Any] = {"input": source["input"]} if "input" in source else {"stdin": subprocess.DEVNULL}

        def shell() -> _Ran:
            try:
                done = subprocess.run(
                    command,
                    shell=True,
                    capture_output=True,
                    text=True,
                    timeout=remote.COMMAND_TIMEOUT_S,
                    check=check,
                    **stdin,
                )
            except subprocess.TimeoutExpired:
                return _Ran(124, "", f"timed out after {remote.COMMAND_TIMEOUT_S:g} s")
            return _Ran(done.returncode, done.stdout, done.stderr)

        return await asyncio.to_thread(shell)
