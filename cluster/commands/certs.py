"""`cluster certs init|rotate|revoke|show|issue`: the cluster CA and its certificates."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rich.markup import escape

from cluster.bringup import certs, lab, labstate, local
from cluster.commands.output import console, err_console
from cluster.pki import authority, pins


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        print_expiry(home)
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


def print_expiry(home: Path) -> None:
    state = labstate.read_state(home)
    agents = [h.label for h in state.spec.hosts] if state else [certs.LOCAL_AGENT]
    now = authority.now_utc()
    try:
        line = "; ".join(f"{e.who} {e.text(now)}" for e in certs.expiries(home, agents))
    except pins.PinsError as exc:
        line = str(exc)
    console.print(f"certificates until: {line}", highlight=False)
