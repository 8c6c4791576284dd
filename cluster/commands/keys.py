"""`cluster keys …`, `cluster teams …` and `cluster usage`: the operator's side of the gateway, as subcommands
added to the CLI's parser. They work on the head's database directly (`~/.orchard/gateway.db`); a running
router picks changes up within a second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.gateway import keys, store, usage

Home = Callable[[], Path]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], home: Home, console: Console) -> None:
    """Add `keys`, `teams` and `usage` to the CLI."""
    admin = _Admin(home, console)
    keys_cmd = sub.add_parser("keys", help="API keys: create, list, update, revoke").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys_cmd.add_parser("create", help="a new key for a team; prints its secret once")
    create.add_argument("--team", required=True)
    _limit_flags(create)
    create.add_argument("--expires", type=_date, metavar="DATE", help="YYYY-MM-DD[THH:MM] (UTC)")
    create.add_argument("--admin", action="store_true", help="may use the operator endpoints (/orchard/*)")
    create.add_argument("--weight", type=float, help="the team's share when the lab is busy (default 1)")
    create.set_defaults(func=admin.create)
    list_keys = keys_cmd.add_parser("list", help="every key (never its secret)")
    list_keys.add_argument("--json", action="store_true")
    list_keys.set_defaults(func=admin.list_keys)
    revoke = keys_cmd.add_parser("revoke", help="the key stops working within a second")
    revoke.add_argument("id")
    revoke.set_defaults(func=admin.revoke)
    update = keys_cmd.add_parser("update", help="change a key's limits, expiry or admin right")
    update.add_argument("id")
    _limit_flags(update)
    update.add_argument("--expires", type=_date, metavar="DATE")
    update.add_argument("--admin", action=argparse.BooleanOptionalAction, default=None)
    update.set_defaults(func=admin.update)

    teams_cmd = sub.add_parser("teams", help="teams' limits and weights").add_subparsers(
        dest="teams_command", required=True
    )
    set_team = teams_cmd.add_parser("set", help="create or change a team's limits and weight")
    set_team.add_argument("name")
    _limit_flags(set_team)
    set_team.add_argument("--weight", type=float)
    set_team.set_defaults(func=admin.set_team)
    list_teams = teams_cmd.add_parser("list", help="every team")
    list_teams.add_argument("--json", action="store_true")
    list_teams.set_defaults(func=admin.list_teams)

    usage_cmd = sub.add_parser("usage", help="tokens and requests from the usage records")
    usage_cmd.add_argument("--team")
    usage_cmd.add_argument("--since", type=_date, metavar="DATE", help="default: the first of this month (UTC)")
    usage_cmd.add_argument("--by", choices=sorted(usage.GROUPS), default="team")
    usage_cmd.add_argument("--json", action="store_true")
    usage_cmd.set_defaults(func=admin.usage)


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=_count, help="requests per minute (0: no limit)")
    parser.add_argument("--tpm", type=_count, help="tokens per minute, prompt + completion (0: no limit)")
    parser.add_argument("--monthly-tokens", type=_count, help="tokens per calendar month, UTC (0: no limit)")
    parser.add_argument("--models", type=_models, help="the models it may use, comma-separated ('all': every one)")


NO_LIMIT: frozenset[str] = frozenset({"*"})  # --models all


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number (0 for no limit), got {text!r}")
    return int(text)


def _models(text: str) -> frozenset[str]:
    if text.strip() == "all":
        return NO_LIMIT
    models = frozenset(m.strip() for m in text.split(",") if m.strip())
    if not models:
        raise argparse.ArgumentTypeError("expected model names separated by commas, or 'all'")
    return models


def _stored(value: object) -> object:
    """A flag's value as the database keeps it: 0 and 'all' mean no limit (NULL)."""
    return None if value == 0 or value == NO_LIMIT else value


def _date(text: str) -> float:
    """A moment in UTC; a date alone means through the end of that day."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2027-01-31 or 2027-01-31T18:00, got {text!r}") from None
    stamp = moment.replace(tzinfo=moment.tzinfo or UTC).timestamp()
    return stamp + 86_400 if "T" not in text and " " not in text.strip() else stamp


def _limit_changes(args: argparse.Namespace) -> dict[str, object]:
    return {
        name: _stored(getattr(args, name))
        for name in ("rpm", "tpm", "monthly_tokens", "models")
        if getattr(args, name) is not None
    }


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(stamp)) if stamp else "-"


def _limit_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


@dataclass(frozen=True)
class KeyRow:
    """One key as `cluster keys list` shows it (`--json`: these fields); never its secret. Times are unix
    seconds; a limit None is none, `models` None every model."""

    id: str
    team: str
    admin: bool
    rpm: int | None
    tpm: int | None
    monthly_tokens: int | None
    models: list[str] | None
    created: float
    last_used: float | None
    expires: float | None
    tokens_this_month: int
    state: str  # active | expired | revoked


@dataclass(frozen=True)
class TeamRow:
    name: str
    weight: float
    rpm: int | None
    tpm: int | None
    monthly_tokens: int | None
    models: list[str] | None
    keys: int  # keys not revoked
    tokens_this_month: int


def _limits(limits: keys.Limits) -> dict[str, Any]:
    """A key's or a team's limits as their rows show them (None: no limit; models None: every model)."""
    models = sorted(limits.models) if limits.models is not None else None
    return {"rpm": limits.rpm, "tpm": limits.tpm, "monthly_tokens": limits.monthly_tokens, "models": models}


def _key_row(key: keys.Key, tokens: int, now: float) -> KeyRow:
    state = "revoked" if key.revoked else "expired" if not key.usable(now) else "active"
    lim = key.limits
    return KeyRow(
        id=key.id,
        team=key.team,
        admin=key.admin,
        **_limits(lim),
        created=key.created,
        last_used=key.last_used,
        expires=key.expires,
        tokens_this_month=tokens,
        state=state,
    )


def _team_row(team: keys.Team, snapshot: keys.Snapshot, tokens: int) -> TeamRow:
    lim = team.limits
    count = sum(1 for k in snapshot.keys.values() if k.team == team.name and k.revoked is None)
    return TeamRow(
        name=team.name,
        weight=team.weight,
        **_limits(lim),
        keys=count,
        tokens_this_month=tokens,
    )


class _Admin:
    def __init__(self, home: Home, console: Console) -> None:
        self.home, self.console = home, console

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with store.opened(store.db_path(self.home())) as conn:
            yield conn

    def create(self, args: argparse.Namespace) -> int:
        if args.team == keys.OPERATOR_TEAM:
            self.console.print(f"[red]the team name {keys.OPERATOR_TEAM} is the head's own; choose another[/]")
            return 2
        fields = (_stored(args.rpm), _stored(args.tpm), _stored(args.monthly_tokens), _stored(args.models))
        limits = keys.Limits(*fields)  # type: ignore[arg-type]
        with self._db() as conn:
            key, secret = keys.create_key(
                conn, args.team, limits, admin=args.admin, expires=args.expires, weight=args.weight
            )
        sys.stderr.write(
            f"created {key.id} for team {key.team}{' (admin)' if key.admin else ''}; "
            "the secret below is shown once, store it now:\n"
        )
        print(secret, flush=True)  # alone on stdout, so `KEY=$(cluster keys create …)` works
        return 0

    def list_keys(self, args: argparse.Namespace) -> int:
        now = time.time()
        with self._db() as conn:
            snapshot = keys.load_snapshot(conn)
            by_key = keys.month_tokens(conn, now)[0]
        rows = [
            _key_row(key, by_key.get(key.id, 0), now) for key in sorted(snapshot.keys.values(), key=lambda k: k.created)
        ]
        if args.json:
            print(json.dumps({"keys": [asdict(row) for row in rows]}))
            return 0
        table = Table(title="API keys")
        for column in (
            "id",
            "team",
            "admin",
            "rpm",
            "tpm",
            "monthly",
            "models",
            "created",
            "last used",
            "tokens this month",
            "state",
        ):
            table.add_column(column)
        for r in rows:
            table.add_row(
                r.id,
                r.team,
                "yes" if r.admin else "",
                _limit_text(r.rpm),
                _limit_text(r.tpm),
                _limit_text(r.monthly_tokens),
                _limit_text(r.models),
                _when(r.created),
                _when(r.last_used),
                f"{r.tokens_this_month:,}",
                r.state,
            )
        self.console.print(table)
        return 0

    def revoke(self, args: argparse.Namespace) -> int:
        return self._change(lambda conn: keys.revoke_key(conn, args.id), f"revoked {args.id}")

    def update(self, args: argparse.Namespace) -> int:
        changes = _limit_changes(args)
        if args.expires is not None:
            changes["expires"] = args.expires
        if args.admin is not None:
            changes["admin"] = int(args.admin)
        return self._change(lambda conn: keys.update_key(conn, args.id, changes), f"updated {args.id}")

    def set_team(self, args: argparse.Namespace) -> int:
        changes = _limit_changes(args)
        if args.weight is not None:
            if args.weight <= 0:
                self.console.print("[red]--weight must be more than 0[/]")
                return 2
            changes["weight"] = args.weight
        return self._change(lambda conn: keys.set_team(conn, args.name, changes), f"team {args.name} set")

    def _change(self, action: Callable[..., None], done: str) -> int:
        try:
            with self._db() as conn:
                action(conn)
        except keys.KeyError_ as exc:
            self.console.print(f"[red]{escape(str(exc))}[/]")
            return 1
        self.console.print(f"{done} (a running router applies it within a second)")
        return 0

    def list_teams(self, args: argparse.Namespace) -> int:
        with self._db() as conn:
            snapshot = keys.load_snapshot(conn)
            by_team = keys.month_tokens(conn, time.time())[1]
        rows = [
            _team_row(team, snapshot, by_team.get(team.name, 0))
            for team in sorted(snapshot.teams.values(), key=lambda t: t.name)
        ]
        if args.json:
            print(json.dumps({"teams": [asdict(row) for row in rows]}))
            return 0
        table = Table(title="teams")
        for column in ("team", "weight", "rpm", "tpm", "monthly", "models", "keys", "tokens this month"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                r.name,
                f"{r.weight:g}",
                _limit_text(r.rpm),
                _limit_text(r.tpm),
                _limit_text(r.monthly_tokens),
                _limit_text(r.models),
                str(r.keys),
                f"{r.tokens_this_month:,}",
            )
        self.console.print(table)
        return 0

    def usage(self, args: argparse.Namespace) -> int:
        since = args.since if args.since is not None else keys.month_start(time.time())
        with self._db() as conn:
            lines = usage.report(conn, args.by, since, args.team)
        if args.json:
            print(json.dumps({"since": _when(since), "by": args.by, "rows": [asdict(line) for line in lines]}))
            return 0
        table = Table(
            title=f"usage by {args.by} since {_when(since)} UTC" + (f", team {args.team}" if args.team else "")
        )
        for column in (args.by, "requests", "prompt tokens", "completion tokens", "cached tokens", "errors"):
            table.add_column(column, justify="left" if column == args.by else "right")
        for line in lines:
            table.add_row(
                line.group,
                f"{line.requests:,}",
                f"{line.prompt_tokens:,}",
                f"{line.completion_tokens:,}",
                f"{line.cached_tokens:,}",
                f"{line.errors:,}",
            )
        self.console.print(table)
        return 0
