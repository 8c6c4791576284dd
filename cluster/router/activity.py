"""What the lab has been doing, for the dashboard: the latest failed requests and each team's use since the
router started. Fed one usage row per request (the gateway's hook); bounded."""

from __future__ import annotations

from collections import deque
from http import HTTPStatus

from cluster.gateway.usage import UsageRow
from cluster.router.rows import ErrorRow, TeamRow

MAX_ERRORS = 50
MAX_TEAMS = 256  # more teams than this are summed as "other": a dashboard table, not the usage ledger
OTHER = "other"


class Activity:
    def __init__(self) -> None:
        self.errors: deque[ErrorRow] = deque(maxlen=MAX_ERRORS)
        self.teams: dict[str, TeamRow] = {}

    def observe(self, row: UsageRow) -> None:
        team = row.team or "-"
        if team not in self.teams and len(self.teams) >= MAX_TEAMS:
            team = OTHER
        seen = self.teams.setdefault(team, TeamRow(team=team))
        seen.requests += 1
        seen.errors += row.status >= 400
        seen.prompt_tokens += row.prompt_tokens
        seen.completion_tokens += row.completion_tokens
        if row.status >= 400:
            self.errors.appendleft(
                ErrorRow(
                    at=row.at,
                    request_id=row.request_id,
                    status=row.status,
                    reason=_reason(row.status),
                    model=row.model,
                    worker=row.worker or "",
                    team=row.team or "",
                )
            )


def _reason(status: int) -> str:
    if status == 499:
        return "client closed the request"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
