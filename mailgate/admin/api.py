"""The JSON API of the admin endpoint, with the field names of the CLI's `--json`.

Input: HTTP requests that passed `mailgate.admin.auth` (a bearer token: the shared admin
token, or an agent's own; `/api/health` is open, and says only up or down without an admin's
token), with query parameters and JSON or form bodies (untrusted, checked by `params`).
Output: JSON. Errors are `{"error": "<one line>"}` with 400 (bad input), 401 (no or wrong
token), 403 (an agent on an admin route, or naming another agent to act as), 404 (no such
ticket or route), 409 (a well-formed request the state refuses: an address that is not a
configured agent, a ticket merged already), 413 (uploads over `[admin] max_upload_bytes`),
500 (a bug; logged). Every change records its actor: the agent whose token or session it
was, or `admin-token`.

    GET  /api/health                      up/down; with the token: status, problems, storage,
                                          spool, outbound, last mail, relay
    GET  /api/tickets                     ?q= (full text) &status= &view= &assignee=
                                          &unassigned= &team= &mailbox= &org= &tag=
                                          &priority= &breached= &since= &until= (dates)
                                          &limit= &cursor=; X-Total-Count: how many match,
                                          Link: rel="next" the next page
    GET  /api/me                          who the token is: actor, role
    GET  /api/tickets/{id}                as `mailgate tickets show ID --json`
    GET  /api/tickets/{id}/actions        who changed it, as `mailgate tickets history ID`
    POST /api/tickets/{id}/reply          body; agent (the admin token only: an agent's
                                          token replies as that agent); multipart/form-data:
                                          files too ([admin] max_upload_bytes together, else
                                          413 and nothing sent)
    POST /api/tickets/{id}/note           body: an internal note by the caller
    POST /api/tickets/{id}/merge          into (this ticket merges into that one)
    POST /api/tickets/{id}/split          message, with_later (true/false)
    GET  /api/canned                      the canned replies' names
    GET  /api/tickets/{id}/canned/{name}  canned reply rendered for the ticket (?agent=)
    POST /api/tickets/{id}/assign         agent
    POST /api/tickets/{id}/status         status
    GET  /api/audit/incoming              ?action= &queue_id= &ticket= &address= &message_id=
                                          &q= &day= &since= &until= &limit= &before=
    GET  /api/audit/outgoing              ?status= &ticket= &id= &address= &message_id= &q=
                                          &day= &since= &until= &limit= &before=; both audits:
                                          X-Total-Count and Link: rel="next"
    GET  /api/orgs                        organizations ([] until they exist)
    GET  /api/customers                   ?q= &org= &limit= &after= (mailgate.admin.directory)
    GET  /api/customers/{id}              a customer and their tickets (?limit= &cursor=)
    GET  /api/spam                        quarantined mail, as `mailgate spam list --json`;
                                          ?state=quarantined (default), released or all &limit=
                                          &after= (the next page); X-Total-Count, Link
    GET  /api/spam/{queue_id}             as `mailgate spam show ID --json`
    POST /api/spam/{queue_id}/release     as `mailgate spam release ID`
    GET  /api/messages/{m}/attachments/{a} attachment a of message m (a download)
    GET  /api/messages/{m}/raw            message m's raw .eml (a download)
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from mailgate.admin import download, params, ticket_query
from mailgate.admin.backend import BACKEND, VIEWS, AuditPage, Backend, Conflict
from mailgate.admin.principal import Forbidden, Principal, reply_agent
from mailgate.errors import NotFound, Refused, TooLarge, UserError
from mailgate.model import Upload
from mailgate.store import outbound as outbox
from mailgate.store import spam as spam_store
from mailgate.store import tickets as ticket_store

log = logging.getLogger("mailgate.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_dumps = functools.partial(json.dumps, ensure_ascii=False, default=str)


def reply(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def error(message: str, status: int) -> web.Response:
    return reply({"error": message}, status)


def status_of(exc: UserError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict | Refused):
        return 409
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, Forbidden):
        return 403
    return 400


def too_large(request: web.Request) -> str:
    """What a request over the app's body limit is told."""
    limit = backend(request).config.admin_max_upload_bytes
    return (f"the upload is over the limit of {limit} bytes ([admin] max_upload_bytes);"
            " nothing was sent")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API routes: every failure as JSON with its status. Panels show user errors on the page
    themselves; what reaches this point becomes a plain-text page with the same status."""
    is_api = request.path.startswith("/api/") or request.path == "/metrics"
    try:
        return await handler(request)
    except UserError as exc:
        if is_api:
            return error(str(exc), status_of(exc))
        return web.Response(status=status_of(exc), content_type="text/plain",
                            text=f"{status_of(exc)}: {exc}\n")
    except web.HTTPRequestEntityTooLarge:
        if is_api:
            return error(too_large(request), 413)
        return web.Response(status=413, content_type="text/plain",
                            text=f"413: {too_large(request)}\n")
    except web.HTTPException as exc:
        if is_api and exc.status >= 400:
            return error(exc.reason, exc.status)
        raise
    except Exception:
        log.exception("admin: unexpected error on %s %s", request.method, request.path)
        if is_api:
            return error("internal error (logged by the daemon)", 500)
        return web.Response(status=500, content_type="text/plain",
                            text="500: internal error (logged by the daemon)\n")


def backend(request: web.Request) -> Backend:
    return request.app[BACKEND]


async def body_of(request: web.Request) -> Mapping[str, Any]:
    """The request's fields: a JSON object, or a urlencoded / multipart form."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            raise params.BadInput("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise params.BadInput("the JSON body must be an object")
        return data
    return await request.post()


def principal(request: web.Request) -> Principal:
    """Who the request acts for (set by `auth.middleware` on every authenticated route)."""
    found = request.get("principal")
    assert isinstance(found, Principal), request.path
    return found


def _ticket_id(request: web.Request) -> int:
    return params.ticket_id(request.match_info["id"])


# --- handlers --------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    """Without the token, only whether mailgate is up (200 `{"status": "up"}`) or down (503
    `{"status": "down"}`: the spool or the database is gone, replaced, damaged or unreadable);
    with it, the full report."""
    b = backend(request)
    who = request.get("principal")
    if not (isinstance(who, Principal) and who.is_admin):
        try:
            up = await b.run(b.up)
        except Exception:
            log.exception("admin: health check failed")
            up = False
        return reply({"status": "up" if up else "down"}, 200 if up else 503)
    try:
        data = await b.run(b.health)
    except Exception as exc:
        log.exception("admin: health check cannot read the database")
        return reply({"status": "error", "error": f"{type(exc).__name__}: {exc}"}, 503)
    return reply(data)


async def list_tickets(request: web.Request) -> web.Response:
    """A page of tickets (the body: a list, as before); `X-Total-Count` says how many match,
    `Link: <…>; rel="next"` names the next page while there is one."""
    query = ticket_query.read(request.query, tuple(VIEWS))
    b = backend(request)
    found = await b.run(b.tickets, query)
    more = query.link_query(cursor=found.next_cursor) if found.next_cursor else ""
    return paged(found.rows, found.total, f"/api/tickets?{more}" if more else "")


async def me(request: web.Request) -> web.Response:
    who = principal(request)
    return reply({"actor": who.actor, "role": who.role, "name": who.name})


async def show_ticket(request: web.Request) -> web.Response:
    b = backend(request)
    return reply(await b.run(b.ticket, _ticket_id(request)))


def uploads_of(form: Mapping[str, Any]) -> tuple[Upload, ...]:
    """The files of a multipart form (every file field, in order), read whole: the app's
    body limit ([admin] max_upload_bytes and room for the fields) bounds them."""
    items = form.items() if hasattr(form, "items") else ()
    files = []
    for _name, value in items:
        if isinstance(value, web.FileField):
            value.file.seek(0)
            files.append(Upload(value.filename or "", value.content_type or "", value.file.read()))
    return tuple(files)


def text_fields(form: Mapping[str, Any]) -> dict[str, Any]:
    """The form without its files (a file where text is expected is a bad request)."""
    return {k: v for k, v in form.items() if not isinstance(v, web.FileField)}


async def ticket_actions(request: web.Request) -> web.Response:
    b = backend(request)
    return reply(await b.run(b.actions, _ticket_id(request)))


async def reply_ticket(request: web.Request) -> web.Response:
    ticket_id = _ticket_id(request)
    form = await body_of(request)
    uploads = uploads_of(form)
    form = text_fields(form)
    who = principal(request)
    agent = reply_agent(who, params.text(form, "agent", 320))
    body = params.text(form, "body", params.MAX_BODY, required=True)
    b = backend(request)
    result = await b.run(b.reply, ticket_id, agent, body, who.actor, uploads)
    log.info("admin: ticket #%d reply as %s by %s (api): outbound #%d %s", ticket_id,
             agent.strip().lower(), who.actor, result["outbound_id"], result["status"])
    return reply(result)


async def assign_ticket(request: web.Request) -> web.Response:
    ticket_id = _ticket_id(request)
    form = await body_of(request)
    agent = params.text(form, "agent", 320)
    who = principal(request)
    b = backend(request)
    result = await b.run(b.assign, ticket_id, agent, who.actor)
    log.info("admin: ticket #%d assigned to %s by %s (api)", ticket_id, result["assignee"],
             who.actor)
    return reply(result)


async def status_ticket(request: web.Request) -> web.Response:
    ticket_id = _ticket_id(request)
    form = await body_of(request)
    status = params.choice(form, "status", ticket_store.STATUSES, required=True)
    assert status is not None
    who = principal(request)
    b = backend(request)
    result = await b.run(b.set_status, ticket_id, status, who.actor)
    log.info("admin: ticket #%d status %s by %s (api)", ticket_id, status, who.actor)
    return reply(result)


async def _edit(request: web.Request) -> tuple[int, Mapping[str, Any], Backend, str]:
    """A note, merge or split: the ticket, the form, the backend, and who it is by."""
    form = await body_of(request)
    b = backend(request)
    return _ticket_id(request), form, b, b.acting(principal(request),
                                                  params.text(form, "agent", 320))


def _required(form: Mapping[str, Any], name: str, what: str) -> int:
    value = params.integer(form, name)
    if value is None:
        raise params.BadInput(f"{name}: required, {what}")
    return value


async def note_ticket(request: web.Request) -> web.Response:
    ticket_id, form, b, actor = await _edit(request)
    body = params.text(form, "body", params.MAX_BODY, required=True)
    result = await b.run(b.note, ticket_id, actor, body)
    log.info("admin: ticket #%d internal note by %s (api)", ticket_id, actor)
    return reply(result)


async def merge_ticket(request: web.Request) -> web.Response:
    ticket_id, form, b, actor = await _edit(request)
    into = _required(form, "into", "the number of the ticket to merge into")
    result = await b.run(b.merge, ticket_id, into, actor)
    log.info("admin: ticket #%d merged into #%d by %s (api)", ticket_id, into, actor)
    return reply(result)


async def split_ticket(request: web.Request) -> web.Response:
    ticket_id, form, b, actor = await _edit(request)
    message = _required(form, "message", "the number of the message to split off")
    result = await b.run(b.split, ticket_id, message, params.flag(form, "with_later"), actor)
    log.info("admin: ticket #%d split into #%d by %s (api)", ticket_id,
             result["new_ticket_id"], actor)
    return reply(result)


async def canned_list(request: web.Request) -> web.Response:
    b = backend(request)
    return reply([{"name": n} for n in await b.run(b.canned_names)])


async def canned_reply(request: web.Request) -> web.Response:
    ticket_id = _ticket_id(request)
    name = params.canned_name(request.match_info["name"])
    b = backend(request)
    agent = reply_agent(principal(request), params.text(request.query, "agent", 320))
    return reply(await b.run(b.canned, ticket_id, name, agent))


def _audit_filters(q: Mapping[str, str]) -> dict[str, Any]:
    """The filters both audits take (a bad value: BadInput, a 400)."""
    return {
        "q": params.text(q, "q", 500) or None,
        "address": params.text(q, "address", 320) or None,
        "message_id": params.text(q, "message_id", 998) or None,
        "day": params.day(q),
        "since": params.day(q, "since"),
        "until": params.day(q, "until"),
        "limit": params.limit(q),
        "before_id": params.integer(q, "before"),
    }


def paged(rows: list[dict[str, Any]], total: int, next_link: str) -> web.Response:
    """A page of a list: the rows, `X-Total-Count` (how many in all) and, while more follow,
    `Link: <next_link>; rel="next"`."""
    response = reply(rows)
    response.headers["X-Total-Count"] = str(total)
    if next_link:
        response.headers["Link"] = f'<{next_link}>; rel="next"'
    return response


def _audit_reply(found: AuditPage, path: str, q: Mapping[str, str]) -> web.Response:
    return paged(found.rows, found.total, params.page_link(path, q, "before", found.next_before))


async def audit_incoming(request: web.Request) -> web.Response:
    q = request.query
    filters = {
        **_audit_filters(q),
        "action": params.word(q, "action"),
        "queue_id": params.text(q, "queue_id", 100) or params.text(q, "queue-id", 100) or None,
        "ticket_id": params.integer(q, "ticket"),
    }
    b = backend(request)
    found = await b.run(functools.partial(b.incoming, **filters))
    return _audit_reply(found, "/api/audit/incoming", q)


async def audit_outgoing(request: web.Request) -> web.Response:
    q = request.query
    filters = {
        **_audit_filters(q),
        "status": params.choice(q, "status", outbox.STATUSES),
        "ticket_id": params.integer(q, "ticket"),
        "outbound_id": params.integer(q, "id"),
    }
    b = backend(request)
    found = await b.run(functools.partial(b.outgoing, **filters))
    return _audit_reply(found, "/api/audit/outgoing", q)


async def orgs(request: web.Request) -> web.Response:
    b = backend(request)
    return reply(await b.run(b.orgs))


async def list_spam(request: web.Request) -> web.Response:
    q = request.query
    state = params.choice(q, "state", (*spam_store.STATES, "all")) or spam_store.QUARANTINED
    after = params.text(q, "after", 40).strip() or None
    b = backend(request)
    found = await b.run(b.quarantine, None if state == "all" else state, params.limit(q),
                        params.queue_id(after) if after else None)
    return paged(found.rows, found.total,
                 params.page_link("/api/spam", q, "after", found.next_after))


async def show_spam(request: web.Request) -> web.Response:
    b = backend(request)
    return reply(await b.run(b.quarantined, params.queue_id(request.match_info["queue_id"])))


async def release_spam(request: web.Request) -> web.Response:
    queue_id = params.queue_id(request.match_info["queue_id"])
    b = backend(request)
    result = await b.run(b.release, queue_id,
                         f"{principal(request).actor} (admin API from {request.remote})")
    return reply(result)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/health", health)
    r.add_get("/api/tickets", list_tickets)
    r.add_get("/api/me", me)
    r.add_get(r"/api/tickets/{id:\d+}", show_ticket)
    r.add_get(r"/api/tickets/{id:\d+}/actions", ticket_actions)
    r.add_post(r"/api/tickets/{id:\d+}/reply", reply_ticket)
    r.add_post(r"/api/tickets/{id:\d+}/assign", assign_ticket)
    r.add_post(r"/api/tickets/{id:\d+}/status", status_ticket)
    r.add_post(r"/api/tickets/{id:\d+}/note", note_ticket)
    r.add_post(r"/api/tickets/{id:\d+}/merge", merge_ticket)
    r.add_post(r"/api/tickets/{id:\d+}/split", split_ticket)
    r.add_get("/api/canned", canned_list)
    r.add_get(r"/api/tickets/{id:\d+}/canned/{name}", canned_reply)
    r.add_get("/api/audit/incoming", audit_incoming)
    r.add_get("/api/audit/outgoing", audit_outgoing)
    r.add_get("/api/orgs", orgs)
    r.add_get("/api/spam", list_spam)
    r.add_get("/api/spam/{queue_id}", show_spam)
    r.add_post("/api/spam/{queue_id}/release", release_spam)
    download.add_routes(app, "/api")
