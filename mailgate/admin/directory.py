"""The organizations and customers pages, and their API: who the desk's customers are.

Input: HTTP requests that passed `mailgate.admin.auth`, query values (untrusted, checked by
`params`), rows whose names and addresses came from mail (untrusted: escaped by the
templates). Output: the `/orgs`, `/customers` and `/customers/{id}` panels (tables with counts,
an organization's routing in words, a customer's tickets a page at a time) and
`GET /api/customers`, `GET /api/customers/{id}` (JSON; `X-Total-Count`, `Link: rel="next"`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from mailgate.admin import params
from mailgate.admin.api import paged, reply
from mailgate.admin.backend import BACKEND, Backend
from mailgate.admin.panels import page
from mailgate.errors import NotFound, UserError
from mailgate.store import orgs, search


def _backend(request: web.Request) -> Backend:
    return request.app[BACKEND]


# Each `on_new_ticket` key as words ({} is its value; a list is joined with commas).
ROUTE_PHRASES = (
    ("assign", "assign to {}"), ("round_robin", "assign in turn to {}"),
    ("assign_team", "give to team {}"), ("round_robin_team", "assign in turn within team {}"),
    ("priority", "priority {}"), ("add_tags", "tag {}"), ("status", "status {}"),
    ("send_template", "send template {}"), ("notify_team", "notify team {}"),
)


def route_words(route: Mapping[str, Any]) -> str:
    """An organization's `on_new_ticket` routing as a sentence ("" when it has none)."""
    parts = [phrase.format(", ".join(value) if isinstance(value, list) else value)
             for key, phrase in ROUTE_PHRASES if (value := route.get(key))]
    return "New tickets: " + "; ".join(parts) + "." if parts else ""


def _customers(b: Backend, q: Mapping[str, str]) -> tuple[list[dict[str, Any]], int, str]:
    """A page of customers, the total, and the last address when more follow."""
    limit = params.limit(q)
    org = params.text(q, "org", 200).strip() or None
    text = params.text(q, "q", 200)
    after = params.text(q, "after", 320) or None
    try:
        rows, total = orgs.find_customers(b.db, text, org, limit + 1, after)
    except NotFound as exc:
        raise params.BadInput(f"org: {exc}") from None
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, total, rows[-1]["email"] if more and rows else ""


def _customer(b: Backend, customer_id: int, q: Mapping[str, str]) -> dict[str, Any]:
    customer = orgs.get_customer(b.db, customer_id)
    found = search.search_tickets(b.db, search.TicketFilter(requester_id=customer_id),
                                  limit=params.limit(q),
                                  cursor=params.text(q, "cursor", 200) or None)
    customer["tickets"] = found.rows
    customer["ticket_total"] = found.total
    customer["next_cursor"] = found.next_cursor or ""
    return customer


# --- panels -----------------------------------------------------------------------------------


async def orgs_page(request: web.Request) -> web.Response:
    b = _backend(request)
    rows = await b.run(b.orgs)
    for row in rows:
        row["routing"] = route_words(row.get("on_new_ticket") or {})
    return page(request, "orgs.html", rows=rows)


async def customers_page(request: web.Request) -> web.Response:
    b = _backend(request)
    q = request.query
    try:
        rows, total, last = await b.run(_customers, b, q)
    except UserError as exc:
        return page(request, "error.html", 400, title="Bad search", message=str(exc))
    next_link = params.page_link("/customers", q, "after", last)
    return page(request, "customers.html", rows=rows, total=total, q=q.get("q", ""),
                org=q.get("org", ""), next_link=next_link)


async def customer_page(request: web.Request) -> web.Response:
    b = _backend(request)
    try:
        customer = await b.run(_customer, b, params.row_id(request.match_info["id"],
                                                           "customer"), request.query)
    except NotFound as exc:
        return page(request, "error.html", 404, title="Not found", message=str(exc))
    except UserError as exc:
        return page(request, "error.html", 400, title="Bad request", message=str(exc))
    return page(request, "customer.html", customer=customer)


# --- API --------------------------------------------------------------------------------------


async def api_customers(request: web.Request) -> web.Response:
    b = _backend(request)
    rows, total, last = await b.run(_customers, b, request.query)
    return paged(rows, total, params.page_link("/api/customers", request.query, "after", last))


async def api_customer(request: web.Request) -> web.Response:
    b = _backend(request)
    customer = await b.run(_customer, b, params.row_id(request.match_info["id"], "customer"),
                           request.query)
    return reply(customer)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/orgs", orgs_page)
    r.add_get("/customers", customers_page)
    r.add_get(r"/customers/{id:\d+}", customer_page)
    r.add_get("/api/customers", api_customers)
    r.add_get(r"/api/customers/{id:\d+}", api_customer)
