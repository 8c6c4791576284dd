"""`cluster up hosts.toml`: bring a lab up over SSH, reconcile on re-runs, and take it down again.

Steps: plan (pure) → per host in parallel: connect, preflight, start or keep the agent → start or keep the
router on the head → wait for the agents to be ready (deadline) → a table. The applied description is kept in
~/.orchard/lab.json so that `down`, `status` and `logs` work without the file and after it was edited.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from cluster.bringup import certs, headrouter, modelcopy, ondemand, preflight, remote, rolling, units
from cluster.bringup.fleet import Report, fetch_workers
from cluster.bringup.labstate import LabError, read_state, state_path
from cluster.bringup.preflight import HostOutcome
from cluster.bringup.sudo import Sudo
from cluster.gateway.gateway import refuse_open
from cluster.gateway.keys import operator_headers
from cluster.gateway.store import db_path
from cluster.pki import authority, pins
from cluster.placement import sizing
from cluster.placement.hostsfile import ClusterSpec, HostSpec
from cluster.placement.plan import Assignment, PlacementError, Room, plan, room, shared_network_warnings
from cluster.state import records
from worker.shared import procs
from worker.shared.download import fetching
from worker.shared.launch import AgentConfig, LaunchConfigError, is_loopback
from worker.shared.models import ModelError


async def _bring_host(
    probe: preflight.Probe,
    host: HostSpec,
    assignment: Assignment | None,
    config: AgentConfig | LaunchConfigError | None,
    report: Report,
    install_service: bool = False,
    trust: tuple[authority.Authority, Path] | None = None,
    root: Sudo | None = None,
) -> HostOutcome:
    outcome, conn = probe.outcome, probe.conn
    if conn is None:
        return outcome
    if assignment is not None and assignment.group is not None:
        outcome.engine = f"{assignment.group.backend} ({assignment.group.name} rank {assignment.rank})"
    model_name = assignment.model.name if assignment else "on-demand engines"
    async with conn:
        try:
            if assignment is None and config is None:
                stopped = await remote.stop_agent(conn, host)
                outcome.state = "idle"
                if stopped.was_running:
                    report(f"{host.label}: no model placed here any more; agent stopped")
                return outcome
            if isinstance(config, LaunchConfigError) or config is None:
                raise config or LaunchConfigError("no agent configuration")
            if trust is not None and await certs.agent_identity(conn, host, trust[0], trust[1], authority.now_utc()):
                report(f"{host.label}: certificate issued by the cluster CA")
            as_service = install_service or bool((await remote.agent_status(conn, host)).service)
            if as_service:  # a host whose agent is a service stays one: a plain re-run updates the service
                result = await remote.install_service(conn, host, config, _root_stdin(root, conn, host))
                if result.changed:
                    report(f"{host.label}: agent installed as a service")
            else:
                result = await remote.start_agent(conn, host, config)
        except (remote.RemoteError, LaunchConfigError) as exc:
            outcome.state, outcome.reason = "failed", str(exc)
            report(f"{host.label}: {exc}")
            return outcome
    outcome.models = [model_name]
    outcome.pid = result.pid
    if result.status == "failed":
        outcome.state, outcome.reason = "failed", f"agent exited at start: {result.log}"
    else:
        outcome.state = "started" if result.changed else "running"
        report(
            f"{host.label}: agent {outcome.state}"
            + (f" (pid {outcome.pid})" if outcome.pid else "")
            + f" serving {model_name}"
        )
    return outcome


def _agent_config(
    assignment: Assignment, spec: ClusterSpec, folder: str | ModelError | None, shared: bool
) -> AgentConfig | LaunchConfigError:
    """The host's agent configuration; its engine gets the model's folder there when the store copied it."""
    if isinstance(folder, ModelError):
        return LaunchConfigError(str(folder))
    try:
        return remote.agent_config(assignment, spec, folder, shared)
    except LaunchConfigError as exc:
        return exc


def _root_stdin(root: Sudo | None, conn: Any, host: HostSpec) -> remote.RootStdin:
    """Root on this host when a step needs it: the password asked once for the run, if its sudo wants one."""

    async def ask() -> str | None:
        return None if root is None else await root.stdin_for(conn, f"{host.user or 'you'}@{host.label}")

    return ask


async def up(
    spec: ClusterSpec,
    home: Path,
    *,
    require_all: bool,
    ready_timeout_s: float | None,
    report: Report,
    install_service: bool = False,
    root: Sudo | None = None,
    service: units.RouterService | None = None,
) -> list[HostOutcome]:
    """`install_service`: the agents, and the head's router (`service`, by default this machine's), become
    services that start at boot; a router that is one stays one."""
    service = service or headrouter.head_service(home, root, report)
    router = spec.router
    if why := refuse_open(f"{router.host}:{router.port}", is_loopback(router.host), router.no_auth, db_path(home)):
        raise LabError(why)
    _endpoint_ready(spec, home)
    stored, probes = await _probed(spec, home, report)
    assignments, free = await _placed(spec, probes, report, stored)
    by_host = {a.host.label: a for a in assignments}
    offered_at = ondemand.hosts_for(spec, assignments)
    folders = await modelcopy.put(stored, assignments, {p.outcome.label: p for p in probes}, report, offered_at)
    demand = ondemand.write(home, ondemand.catalog(spec, assignments, free, offered_at, folders.on_demand, report))
    offering = {h.label for hosts in offered_at.values() for h in hosts}
    configs: dict[str, AgentConfig | LaunchConfigError] = {
        label: _agent_config(a, spec, folders.pinned.get(label), label in offering) for label, a in by_host.items()
    }  # each host's, built once; a host that only offers on-demand models runs a vacant agent
    configs |= {h.label: remote.vacant_config(h) for h in ondemand.vacant(spec, assignments, offered_at)}
    url, changing = await _changing(probes, spec, configs, home, service)
    trust = (_authority(home), home)
    agents = {a.host.agent_address for a in assignments} | {spec.host(label).agent_address for label in configs}
    for label in certs.forget_others(home, agents):
        report(f"{label}: no agent there any more; the router no longer renews its certificate")

    async def bring(probe: preflight.Probe, host: HostSpec) -> HostOutcome:
        label = host.label
        return await _bring_host(
            probe, host, by_host.get(label), configs.get(label), report, install_service, trust, root
        )

    async def serving_again(outcomes: list[HostOutcome]) -> None:  # the routed ones: a group's rank 0
        timeout = ready_timeout_s or max([DEFAULT_WAIT_S, *(m.ready_timeout_s for m in spec.models)])
        routed = [o for o in outcomes if o.label in by_host and by_host[o.label].routed]
        await asyncio.to_thread(_wait_ready, url, routed, timeout, report, home)

    change = rolling.Change(url, frozenset(changing), home)
    pairs = list(zip(probes, spec.hosts, strict=True))
    outcomes = await rolling.bring_in_waves(pairs, change, rolling.replicas(assignments), bring, serving_again, report)
    failed = [o for o in outcomes if o.state in ("unreachable", "failed")]
    if failed and require_all:
        started_now = {o.label for o in outcomes if o.state == "started"}
        await asyncio.gather(*(_stop_host(h, report, root) for h in spec.hosts if h.label in started_now))
        raise LabError("--require-all: " + "; ".join(f"{o.label}: {o.reason}" for o in failed))
    workers = [a.agent_address for a in assignments if a.routed]
    workers += [spec.host(label).agent_address for label in configs if label not in by_host]  # vacant agents
    url = await asyncio.to_thread(
        headrouter.ensure_router, spec, home, workers, report, service, install_service, demand
    )
    routed = {a.host.label for a in assignments if a.routed}
    serving = [o for o in outcomes if o.state in ("started", "running")]
    waiting = [o for o in serving if o.label in routed]
    if ready_timeout_s is None:  # as long as the slowest engine may take, and no less than the default
        labels = {o.label for o in waiting}
        ready_timeout_s = max(
            [DEFAULT_WAIT_S, *(a.model.ready_timeout_s for a in assignments if a.host.label in labels)]
        )
    await asyncio.to_thread(_wait_ready, url, waiting, ready_timeout_s, report, home)
    _group_states(assignments, {o.label: o for o in outcomes})
    return list(outcomes)


async def _probed(spec: ClusterSpec, home: Path, report: Report) -> tuple[modelcopy.Stored, list[preflight.Probe]]:
    """The store's entries for the lab's models (pulled first where missing), and every host probed."""
    stored = await modelcopy.stored(spec, home, report)
    sources = tuple(dict.fromkeys(m.source for m in spec.models if m.name not in stored.entries))
    return stored, list(await asyncio.gather(*(preflight.probe(h, sources, report) for h in spec.hosts)))


async def push_models(spec: ClusterSpec, home: Path, report: Report) -> modelcopy.Folders:
    """`cluster models push`: each host gets its models' files, as `cluster up` would give them; nothing starts."""
    stored, probes = await _probed(spec, home, report)
    try:
        assignments, _ = await _placed(spec, probes, report, stored)
        offered_at = ondemand.hosts_for(spec, assignments)
        return await modelcopy.put(stored, assignments, {p.outcome.label: p for p in probes}, report, offered_at)
    finally:
        for probe in probes:
            if probe.conn is not None:
                probe.conn.close()


async def _placed(
    spec: ClusterSpec, probes: list[preflight.Probe], report: Report, stored: modelcopy.Stored
) -> tuple[list[Assignment], Room]:
    """Where each pinned model runs, planned with what the hosts said of themselves, and checked against them;
    the room on-demand models start from, by the same rules."""
    hosts = {p.outcome.label: p.facts for p in probes if p.facts is not None}
    memory = {label: f.memory_bytes / 1e9 for label, f in hosts.items() if f.memory_bytes}
    usable = {label: f.usable_memory_bytes / 1e9 for label, f in hosts.items() if f.usable_memory_bytes}
    reported = [f.models for f in hosts.values()]
    facts = {m.name: sizing.gathered(m.source, sizing.facts_for(stored.facts_source(m)), reported) for m in spec.models}
    try:
        assignments = plan(spec, facts, memory, usable)
        preflight.layers_known(assignments)
    except PlacementError:
        for probe in probes:
            probe.fail("not started")
        raise
    for warning in shared_network_warnings(assignments):
        report(f"warning: {warning}")
    by_label = {h.label: p for h, p in zip(spec.hosts, probes, strict=True)}
    preflight.check_engines(assignments, by_label, report)
    await preflight.check_groups(assignments, by_label, report, frozenset(stored.entries))
    return assignments, room(spec, facts, memory, usable)


async def _changing(
    probes: list[preflight.Probe],
    spec: ClusterSpec,
    configs: dict[str, AgentConfig | LaunchConfigError],
    home: Path,
    service: units.RouterService,
) -> tuple[str, list[str]]:
    """The running router's URL ("" when none runs) and the hosts whose agents are about to be restarted (their
    configuration or Orchard changed) or stopped (nothing placed there any more): they are drained first, in
    waves where a model would otherwise stop answering (cluster.bringup.rolling), so an edited file cuts no one."""
    state = read_state(home)
    if state is None or await asyncio.to_thread(state.router_now, service) is None:
        return "", []

    async def changing(probe: preflight.Probe, host: HostSpec) -> bool:
        if probe.conn is None:
            return False
        config = configs.get(host.label)
        if isinstance(config, LaunchConfigError):  # said, per host, when it is brought up
            return False
        try:
            status = await remote.agent_status(probe.conn, host)
        except remote.RemoteError:
            return False
        new_hash = remote.config_hash(config) if config else None
        return status.status == "running" and status.hash != new_hash

    found = await asyncio.gather(*(changing(p, h) for p, h in zip(probes, spec.hosts, strict=True)))
    return state.url, [h.label for h, change in zip(spec.hosts, found, strict=True) if change]


def _group_states(assignments: list[Assignment], outcomes: dict[str, HostOutcome]) -> None:
    """A group member is as ready as its group: what its rank 0 is (the router never talks to members)."""
    leaders = {a.group.name: outcomes[a.host.label] for a in assignments if a.group is not None and a.rank == 0}
    for a in assignments:
        if a.group is None or a.rank == 0:
            continue
        member, leader = outcomes[a.host.label], leaders[a.group.name]
        if member.state in ("started", "running"):
            member.state = leader.state
            member.reason = f"group {a.group.name}: {leader.reason}" if leader.reason else ""


def _authority(home: Path) -> authority.Authority:
    """The cluster CA (created on the first `cluster up`) and the router's identity from it."""
    now = authority.now_utc()
    try:
        ca = authority.load_or_create(home, now)
    except authority.AuthorityError as exc:
        raise LabError(str(exc)) from None
    certs.router_identity(home, ca, now)
    try:
        pins.read(authority.tls_folder(home, certs.ROUTER))
    except pins.PinsError as exc:
        raise LabError(str(exc)) from None
    return ca


def _endpoint_ready(spec: ClusterSpec, home: Path) -> None:
    """The endpoint's files exist before the router is started with them."""
    router = spec.router
    for path in (router.tls_cert, router.tls_key):
        if path and not Path(path).expanduser().is_file():
            raise LabError(f"[router] {path}: no such file (the endpoint's certificate or key)")
    pinned = authority.pinned_endpoint(home)
    if router.tls_cert:
        records.write_private(pinned, Path(router.tls_cert).expanduser().read_bytes(), mode=0o644)
    else:
        pinned.unlink(missing_ok=True)
    if router.tls and not router.tls_cert:
        certs.endpoint_identity(home, (router.host,), router.tls_names)


async def rotate_certificates(home: Path, report: Report) -> list[str]:
    """Issue every agent of the running lab, and the router, a new certificate; no call is dropped (agents and
    the router pick them up for new connections). Returns the hosts that could not be reached."""
    state = read_state(home)
    if state is None:
        raise LabError("no lab is running (start it with: cluster up hosts.toml)")
    spec = state.spec
    ca, now = _authority(home), authority.now_utc()

    async def one(host: HostSpec) -> str | None:
        try:
            async with await remote.connect(host) as conn:
                await certs.agent_identity(conn, host, ca, home, now, renew=True)
        except remote.RemoteError as exc:
            report(f"{host.label}: {exc}")
            return host.label
        report(f"{host.label}: new certificate installed")
        return None

    missed = [label for label in await asyncio.gather(*(one(h) for h in spec.hosts)) if label]
    certs.router_identity(home, ca, now, renew=True)
    report("router: new client certificate (used for its next connections)")
    return missed


async def revoke_certificate(home: Path, label: str, report: Report) -> bool:
    """End a lab agent's certificate at once (a leaked key), then give the host a new one over SSH; False when
    the host cannot be reached (it stays refused until `cluster up` reaches it)."""
    state = read_state(home)
    if state is None:
        raise LabError("no lab is running (start it with: cluster up hosts.toml)")
    spec = state.spec
    try:
        host = spec.host(label)
    except KeyError:
        raise LabError(f"{label}: not a host of the running lab ({', '.join(h.label for h in spec.hosts)})") from None
    await certs.revoke(home, host)
    report(f"{host.label}: certificate revoked: the router refuses it from its next check (within seconds)")
    ca = _authority(home)
    try:
        async with await remote.connect(host) as conn:
            await certs.agent_identity(conn, host, ca, home, authority.now_utc(), revoke=True)
    except remote.RemoteError as exc:
        report(f"{host.label}: no new certificate ({exc}); it stays refused until `cluster up` reaches it")
        return False
    report(f"{host.label}: new certificate installed; the router accepts only it")
    return True


DEFAULT_WAIT_S = 900.0  # how long `cluster up` waits for engines to serve, unless told


def _wait_ready(url: str, outcomes: list[HostOutcome], timeout_s: float, report: Report, home: Path) -> None:
    """Until every host serves a real token; a host still fetching its model's files (progress reported as it
    goes) has its deadline counted from the end of the fetch."""
    waiting = {o.label for o in outcomes}
    deadline = time.monotonic() + timeout_s
    said: dict[str, tuple[str, float]] = {}
    with httpx.Client(timeout=3.0, headers=operator_headers(home), verify=authority.trust(home)) as client:
        while waiting and time.monotonic() < deadline:
            for row in fetch_workers(client, url):
                if row.worker_id in waiting and row.ready:
                    waiting.discard(row.worker_id)
                    report(f"{row.worker_id}: ready")
                elif row.worker_id in waiting and fetching(row.detail):
                    deadline = max(deadline, time.monotonic() + timeout_s)
                    last, at = said.get(row.worker_id, ("", 0.0))
                    if row.detail != last and time.monotonic() - at >= 5:
                        report(f"{row.worker_id}: {row.detail}")
                        said[row.worker_id] = (row.detail, time.monotonic())
            time.sleep(0.5)
    for outcome in outcomes:
        if outcome.label in waiting:
            outcome.state, outcome.reason = "not ready", f"no real token within {timeout_s:.0f}s"
        else:
            outcome.state = "ready"


async def _stop_host(host: HostSpec, report: Report, root: Sudo | None = None) -> None:
    """The service first (else it would start the agent again), then a detached agent."""
    try:
        conn = await remote.connect(host)
        async with conn:
            if await remote.uninstall_service(conn, host, _root_stdin(root, conn, host)):
                report(f"{host.label}: agent service unloaded and removed")
            result = await remote.stop_agent(conn, host)
        report(f"{host.label}: agent {'stopped' if result.was_running else 'was not running'}")
    except remote.RemoteError as exc:
        report(f"{host.label}: {exc}")


async def down(
    home: Path, report: Report, root: Sudo | None = None, service: units.RouterService | None = None
) -> bool:
    """Stop every agent of the applied description and the router, and remove the router's service; idempotent."""
    state = read_state(home)
    if state is None:
        return False
    spec = state.spec
    service = service or headrouter.head_service(home, root, report)

    await asyncio.gather(*(_stop_host(h, report, root) for h in spec.hosts))
    try:
        removed = await asyncio.to_thread(service.remove)  # its router finishes its streams first
    except units.ServiceError as exc:
        removed = []
        report(f"router: its {service.manager} service was not removed: {exc}")
    if removed:
        report(f"router: {service.manager} service stopped and removed ({', '.join(map(service.name, removed))})")
    if state.router_running():
        procs.terminate_tree(state.router_pid)
        report("router: stopped")
    elif not removed:
        report(f"router: not running (pid {state.router_pid} is not the router Orchard started; left alone)")
    state_path(home).unlink(missing_ok=True)
    return True
