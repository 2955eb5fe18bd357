"""The ticket list's search box and filters, read from a request's query string.

Input: the query string of `GET /api/tickets` or of the tickets panel (untrusted text).
Output: `TicketQuery`, the checked values (`BadInput`, a 400 or a message on the panel, naming
the parameter otherwise), and `link_query`, the query string of another page of the same list.
The API and the panels read the same parameters: q, view, status, assignee, unassigned, team,
mailbox, org, tag, priority, breached, since, until, limit, cursor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

from mailgate.admin import params
from mailgate.config import PRIORITIES
from mailgate.store import search
from mailgate.store import tickets as ticket_store


@dataclass(frozen=True)
class TicketQuery:
    q: str = ""
    view: str | None = None
    status: str | None = None
    assignee: str | None = None
    unassigned: bool = False
    team: str | None = None
    mailbox: str | None = None
    org: str | None = None
    tag: str | None = None
    priority: str | None = None
    breached: bool = False
    since: str | None = None
    until: str | None = None
    limit: int = 50
    cursor: str | None = None

    def link_query(self, **changes: Any) -> str:
        """This list's query string with `changes` (None drops a parameter)."""
        values = {**asdict(self), **changes}
        if values.get("limit") == 50:
            values["limit"] = None
        kept = {k: ("1" if v is True else v) for k, v in values.items()
                if v not in (None, "", False)}
        return urlencode(kept)

    @property
    def searching(self) -> bool:
        """Whether anything beyond a view narrows the list."""
        return any((self.q, self.status, self.assignee, self.org, self.tag, self.priority,
                    self.breached, self.since, self.until))


def read(values: Mapping[str, Any], views: tuple[str, ...], default_limit: int = 50
         ) -> TicketQuery:
    """The checked filters of a query string; `views`: the view names the caller knows."""
    since = params.day(values, "since")
    until = params.day(values, "until")
    q = params.text(values, "q", search.MAX_QUERY_CHARS) or ""
    return TicketQuery(
        q=q.strip(),
        view=params.choice(values, "view", views),
        status=params.choice(values, "status", ticket_store.STATUSES),
        assignee=params.text(values, "assignee", 320).strip().lower() or None,
        unassigned=params.flag(values, "unassigned"),
        team=params.text(values, "team", 200).strip() or None,
        mailbox=params.text(values, "mailbox", 320).strip().lower() or None,
        org=params.text(values, "org", 200).strip() or None,
        tag=params.text(values, "tag", 100).strip().lower() or None,
        priority=params.choice(values, "priority", PRIORITIES),
        breached=params.flag(values, "breached"),
        since=since,
        until=until,
        limit=params.limit(values, default_limit),
        cursor=params.text(values, "cursor", 200).strip() or None,
    )
