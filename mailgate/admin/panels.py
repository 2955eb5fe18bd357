"""The web panels: server-rendered HTML for people, no scripts, readable on a phone.

Input: HTTP requests that passed `mailgate.admin.auth` (session cookie or bearer token; every
form carries the session's CSRF token; `request["principal"]` says who acts and in which
role), query and form values (untrusted, checked by `params`), and rows from `Backend` whose
text came from mail (untrusted). A signed-in agent replies as themselves (no agent to pick);
only the shared admin token's session picks one. Every change records its actor. Output: HTML
from the jinja2 templates in `templates/`, autoescaped: every value from mail is escaped. A
message's HTML part (sanitised by nh3 when it was stored) is only ever shown inside
`<iframe sandbox="" srcdoc="...">`, under the page's Content-Security-Policy.

    /login, /logout          e-mail and password (or the admin token); the session cookie
    /                        counts and health
    /tickets?view=           Unassigned, Pending customer, Pending agent, All
    /tickets?team=           a tab per team: its open tickets nobody is assigned to
    /tickets/{id}            conversation, reply (with attachments; `?canned=NAME` fills it
                             with a canned reply), internal note, assign, status, merge, split
    /audit/incoming?q=       search by address, subject, Message-ID or day (YYYY-MM-DD)
    /audit/outgoing?q=       delivery status and failure reason
    /forwarding              forwarding confirmations (provider, code, link)
    /spam, /spam/{queue id}  quarantined mail (score, symbols, sender, subject); release
    /orgs, /customers        organizations and customers (mailgate.admin.directory)
    /customers/{id}          a customer and their tickets
    /templates               each template kind rendered with sample data
    /messages/{m}/attachments/{a}, /messages/{m}/raw   downloads (also the inline images)
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup, escape

from mailgate.admin import auth, download, params, ticket_query
from mailgate.admin.api import status_of, uploads_of
from mailgate.admin.backend import BACKEND, VIEWS, AuditPage, Backend
from mailgate.admin.principal import TOKEN_HOLDER, Principal, may_open, reply_agent
from mailgate.config import PRIORITIES
from mailgate.errors import NotFound, UserError
from mailgate.store import audit
from mailgate.store import outbound as outbox
from mailgate.store import spam as spam_store
from mailgate.store import tickets as ticket_store

log = logging.getLogger("mailgate.admin")

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
NAV = (
    ("/", "Dashboard"),
    ("/tickets", "Tickets"),
    ("/audit/incoming", "Incoming"),
    ("/audit/outgoing", "Outgoing"),
    ("/forwarding", "Forwarding"),
    ("/spam", "Spam"),
    ("/customers", "Customers"),
    ("/orgs", "Organizations"),
    ("/templates", "Templates"),
)
INLINE_STYLES = "inline_styles"  # request key: this page shows mail HTML in a sandboxed frame
NOTICES = {
    "replied": "Reply queued.",
    "assigned": "Ticket assigned.",
    "status": "Status changed.",
    "tagged": "Tags saved.",
    "copied": "Participant added: copied on the agents' replies.",
    "uncopied": "Participant removed: no longer copied.",
    "noted": "Internal note added (mailed to nobody).",
    "merged": "Ticket merged into this one.",
    "split": "New ticket split off; it links to the old one.",
    "released": "Released: the message goes through the pipeline as new mail.",
}


def when(value: Any) -> str:
    """'2026-03-01T10:11:12Z' → '2026-03-01 10:11:12 UTC' (anything else as it is)."""
    if not isinstance(value, str) or len(value) < 19 or value[10] != "T":
        return "" if value is None else str(value)
    return value[:10] + " " + value[11:19] + (" UTC" if value.endswith("Z") else "")


def wbr(value: Any) -> Markup:
    """Escaped text with a line-break opportunity after each @ (addresses in narrow cells)."""
    return Markup(str(escape("" if value is None else value)).replace("@", "@<wbr>"))


def http_link(value: Any) -> str:
    """`value` when it is an http(s) URL (fit to be a link), else ''."""
    text = str(value or "").strip()
    return text if text.lower().startswith(("https://", "http://")) else ""


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = when
    env.filters["http_link"] = http_link
    env.filters["wbr"] = wbr
    env.filters["size"] = size
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    return env


def backend(request: web.Request) -> Backend:
    return request.app[BACKEND]


def render(request: web.Request, template: str, **context: Any) -> str:
    config = backend(request).config
    me = request.get("principal")
    nav = [item for item in NAV if me is not None and may_open(me, item[0])]
    return environment().get_template(template).render(
        request=request, path=request.path, csrf=request.get("csrf", ""),
        authed=request.get("auth") in ("session", "bearer"),
        session=request.get("auth") == "session", nav=nav, me=me,
        company=config.branding.company_name, label=config.status_label, **context)


def size(value: object) -> str:
    """A byte count for people: 812 bytes, 4.1 KB, 2.3 MB."""
    try:
        n = int(str(value))
    except ValueError:
        return "?"
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 ** 2:
        return f"{n / 1024:.1f} KB"
    if n < 1024 ** 3:
        return f"{n / 1024 ** 2:.1f} MB"
    return f"{n / 1024 ** 3:.1f} GB"


def actor(request: web.Request) -> Principal:
    found = request.get("principal")
    assert isinstance(found, Principal), request.path
    return found


async def forbidden(request: web.Request, message: str) -> web.Response:
    """The 403 page of an agent on an admin page (called by `auth.middleware`)."""
    return page(request, "error.html", 403, title="Not for your role", message=message)


def page(request: web.Request, template: str, code: int = 200, *,
         inline_styles: bool = False, **context: Any) -> web.Response:
    if inline_styles:
        request[INLINE_STYLES] = True
    return web.Response(text=render(request, template, **context), status=code,
                        content_type="text/html", charset="utf-8")


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


# --- login ------------------------------------------------------------------------------------


async def login_form(request: web.Request, error: str = "", status: int = 200,
                     target: str | None = None) -> web.Response:
    response = web.Response(status=status, content_type="text/html", charset="utf-8")
    csrf = request.app[auth.AUTH].login_csrf(request, response)
    if target is None:
        target = request.query.get("next", "/")
    response.text = render(request, "login.html", error=error, login_csrf=csrf,
                           next=auth.safe_next(target))
    return response


def _field(form: Mapping[str, Any], name: str, max_len: int) -> str:
    value = form.get(name)
    return value[:max_len] if isinstance(value, str) else ""


def _loggable(b: Backend, email: str) -> str:
    """What the log may say of a typed e-mail: a configured agent's address, else nothing of
    it (a password typed into the e-mail field must never reach the log)."""
    return email if b.config.agent(email) is not None else "an address that is no agent"


async def login(request: web.Request) -> web.Response:
    """Sign in with an agent's e-mail and password, or with the shared admin token. Failures
    are counted per account and per address; beyond the limits: 429 until the window passes.
    The password is never logged."""
    authn = request.app[auth.AUTH]
    b = backend(request)
    remote = request.remote or "unknown"
    form = await request.post()
    csrf, target = form.get("csrf"), form.get("next")
    target = auth.safe_next(target if isinstance(target, str) else "/")
    if not isinstance(csrf, str) or not authn.login_csrf_ok(request, csrf):
        return await login_form(request, "The form had expired: sign in again.", 403, target)
    token = _field(form, "token", 1000).strip()
    email = _field(form, "email", 320).strip().lower()
    password = _field(form, "password", 2048)
    if not token and not (email and password):
        return await login_form(request, "Give your e-mail and password (or the admin token).",
                                400, target)
    refused = await b.run(authn.refused, None if token else email, remote)
    if refused is not None:
        log.warning("admin: sign-in refused for %s from %s: too many failures",
                    "the admin token" if token else _loggable(b, email), remote)
        return await login_form(request, refused, 429, target)
    if token:
        who = TOKEN_HOLDER if authn.check_token(token) else None
        wrong = "Wrong token (`mailgate admin token` prints it)."
    else:
        who = await b.run(authn.check_password, email, password)
        wrong = "Wrong e-mail or password."
    if who is None:
        await b.run(authn.failed, None if token else email, remote)
        log.warning("admin: failed sign-in %s from %s",
                    "with a token" if token else f"for {_loggable(b, email)}", remote)
        return await login_form(request, wrong, 401, target)
    secret = await b.run(authn.new_session, who, remote)
    response = see_other(target)
    authn.set_session(response, secret)
    response.del_cookie(auth.LOGIN_COOKIE, path="/login")
    log.info("admin: %s signed in from %s", who.actor, remote)
    return response


async def logout(request: web.Request) -> web.Response:
    """End the session on the server (every copy of its cookie stops working) and drop the
    cookie from the browser."""
    authn = request.app[auth.AUTH]
    b = backend(request)
    await b.run(authn.end_session, request.cookies.get(auth.SESSION_COOKIE, ""))
    response = see_other("/login")
    authn.clear_session(response)
    return response


# --- pages ------------------------------------------------------------------------------------


async def dashboard(request: web.Request) -> web.Response:
    b = backend(request)
    data = await b.run(b.dashboard)
    return page(request, "dashboard.html", data=data, views=VIEWS)


async def ticket_list(request: web.Request) -> web.Response:
    """A view's tickets (a tab each), a team's open unassigned ones (`?team=NAME`), or what the
    search box and filters find; a page at a time with the total and a link to the next."""
    b = backend(request)
    try:
        query = ticket_query.read(request.query, tuple(VIEWS))
    except UserError as exc:
        return page(request, "error.html", 400, title="Bad search", message=str(exc))
    teams = [t.name for t in b.config.teams]
    team = next((t for t in teams if t.lower() == (query.team or "").lower()), "")
    if team:
        query = replace(query, team=team)
    if query.view is None and not query.searching and not query.unassigned:
        query = replace(query, view="unassigned")  # the first tab
    try:
        found = await b.run(b.tickets, query)
    except UserError as exc:
        return page(request, "error.html", status_of(exc), title="Bad search",
                    message=str(exc))
    return page(request, "tickets.html", rows=found.rows, total=found.total, query=query,
                next_link=query.link_query(cursor=found.next_cursor)
                if found.next_cursor else "",
                first_link=query.link_query(cursor=None) if query.cursor else "",
                view=query.view or "", views=VIEWS, mailbox=query.mailbox or "",
                mailboxes=b.config.support_mailboxes, teams=teams, team=team,
                statuses=ticket_store.STATUSES, priorities=PRIORITIES)


async def _ticket_page(request: web.Request, ticket_id: int, error: str = "",
                       code: int = 200, form: dict[str, str] | None = None) -> web.Response:
    b = backend(request)
    try:
        ticket = await b.run(b.ticket_page, ticket_id)
    except NotFound as exc:
        return page(request, "error.html", 404, title="Not found", message=str(exc))
    notice = NOTICES.get(request.query.get("notice", ""), "")
    canned = await b.run(b.canned_names)
    me = actor(request)
    return page(request, "ticket.html", code, inline_styles=True, ticket=ticket,
                error=error, notice=notice, agents=b.config.agents,
                speaking_as=None if me.is_token_holder else me,
                statuses=ticket_store.STATUSES, form=form or {}, canned=canned,
                max_upload=b.config.admin_max_upload_bytes)


async def ticket(request: web.Request) -> web.Response:
    """The ticket page; `?canned=NAME` (and `agent`) fills the reply with that canned reply."""
    ticket_id = params.ticket_id(request.match_info["id"])
    name = request.query.get("canned", "")
    if not name:
        return await _ticket_page(request, ticket_id)
    agent = request.query.get("agent", "")
    b = backend(request)
    try:
        agent = reply_agent(actor(request), agent)  # an agent's canned reply is signed by them
        text = (await b.run(b.canned, ticket_id, params.canned_name(name), agent))["text"]
    except NotFound as exc:
        if not (await b.run(b.ticket_exists, ticket_id)):
            return await _ticket_page(request, ticket_id)  # the page's own 404
        return await _ticket_page(request, ticket_id, str(exc), 404,
                                  {"agent": agent, "canned": name})
    except UserError as exc:
        return await _ticket_page(request, ticket_id, str(exc), status_of(exc),
                                  {"agent": agent, "canned": name})
    return await _ticket_page(request, ticket_id,
                              form={"agent": agent, "body": text, "canned": name})


async def _act(request: web.Request, action: str) -> web.Response:
    ticket_id = params.ticket_id(request.match_info["id"])
    form = await request.post()
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf"}
    b = backend(request)
    who = actor(request)
    try:
        by = b.acting(who, params.text(values, "agent", 320)) \
            if action in ("noted", "merged", "split") else who.actor
        if action == "replied":
            agent = reply_agent(who, params.text(values, "agent", 320))
            body = params.text(values, "body", params.MAX_BODY, required=True)
            uploads = tuple(u for u in uploads_of(form) if u.filename or u.data)
            result = await b.run(b.reply, ticket_id, agent, body, who.actor, uploads)
            log.info("admin: ticket #%d reply as %s by %s (panel): outbound #%d %s", ticket_id,
                     agent.strip().lower(), who.actor, result["outbound_id"], result["status"])
        elif action == "noted":
            body = params.text(values, "body", params.MAX_BODY, required=True)
            await b.run(b.note, ticket_id, by, body)
            log.info("admin: ticket #%d internal note by %s (panel)", ticket_id, by)
        elif action == "merged":
            into = params.integer(values, "into")
            if into is None:
                raise params.BadInput("into: required, the number of the ticket to merge into")
            await b.run(b.merge, ticket_id, into, by)
            log.info("admin: ticket #%d merged into #%d by %s (panel)", ticket_id, into, by)
            return see_other(f"/tickets/{into}?" + urlencode({"notice": action}))
        elif action == "split":
            message = params.integer(values, "message")
            if message is None:
                raise params.BadInput("message: required, the message to split off")
            result = await b.run(b.split, ticket_id, message,
                                 params.flag(values, "with_later"), by)
            log.info("admin: ticket #%d split into #%d by %s (panel)", ticket_id,
                     result["new_ticket_id"], by)
            return see_other(f"/tickets/{result['new_ticket_id']}?"
                             + urlencode({"notice": action}))
        elif action == "assigned":
            agent = params.text(values, "agent", 320)
            await b.run(b.assign, ticket_id, agent, who.actor)
            log.info("admin: ticket #%d assigned to %s by %s (panel)", ticket_id,
                     agent.lower(), who.actor)
        elif action == "tagged":
            tags = params.text(values, "tags", 1000).replace(",", " ").split()
            await b.run(b.set_tags, ticket_id, tags, who.actor)
            log.info("admin: ticket #%d tags %s by %s (panel)", ticket_id, tags, who.actor)
        elif action in ("copied", "uncopied"):
            email = params.text(values, "email", 320, required=True)
            change = b.add_participant if action == "copied" else b.remove_participant
            await b.run(change, ticket_id, email, who.actor)
            log.info("admin: ticket #%d participant %s %s by %s (panel)", ticket_id,
                     "added" if action == "copied" else "removed", email.lower(), who.actor)
        else:
            status = params.choice(values, "status", ticket_store.STATUSES, required=True)
            await b.run(b.set_status, ticket_id, status, who.actor)
            log.info("admin: ticket #%d status %s by %s (panel)", ticket_id, status, who.actor)
    except UserError as exc:
        return await _ticket_page(request, ticket_id, str(exc), status_of(exc), values)
    return see_other(f"/tickets/{ticket_id}?" + urlencode({"notice": action}))


# The ticket page's forms: the path under /tickets/{id}/ each posts to → the change (`_act`).
TICKET_FORMS = {
    "reply": "replied", "assign": "assigned", "status": "status", "tags": "tagged",
    "participants/add": "copied", "participants/remove": "uncopied", "note": "noted",
    "merge": "merged", "split": "split",
}


def _form_handler(action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return await _act(request, action)

    return handle


def _search_terms(q: Mapping[str, str], search: str) -> tuple[str | None, str | None]:
    """The audit panels' (text, day) filters: a search that is a date (YYYY-MM-DD) is the day."""
    day = params.day(q)
    if search and params.is_day(search):
        return None, search
    return search or None, day


def _next_link(path: str, q: Mapping[str, str], found: AuditPage | None) -> str:
    return params.page_link(path, q, "before", found.next_before if found else None)


async def incoming(request: web.Request) -> web.Response:
    """The incoming audit: searched, filtered by action and ticket, a page at a time."""
    q = request.query
    search = (q.get("q") or "").strip()
    found: AuditPage | None = None
    error = ""
    try:
        text, day = _search_terms(q, search)
        b = backend(request)
        found = await b.run(functools.partial(
            b.incoming, action=params.word(q, "action"), q=text, day=day,
            ticket_id=params.integer(q, "ticket"), before_id=params.integer(q, "before"),
            limit=params.limit(q, 100)))
    except UserError as exc:
        error = str(exc)
    return page(request, "incoming.html", 400 if error else 200,
                rows=found.rows if found else [], total=found.total if found else 0,
                next_link=_next_link("/audit/incoming", q, found), q=search,
                ticket=q.get("ticket", ""), action=q.get("action", ""), actions=audit.ACTIONS,
                error=error)


async def outgoing(request: web.Request) -> web.Response:
    """The outgoing audit: searched, filtered by status, ticket or id, a page at a time."""
    q = request.query
    search = (q.get("q") or "").strip()
    found: AuditPage | None = None
    error = ""
    try:
        status = params.choice(q, "status", outbox.STATUSES)
        text, day = _search_terms(q, search)
        b = backend(request)
        found = await b.run(functools.partial(
            b.outgoing, status=status, ticket_id=params.integer(q, "ticket"),
            outbound_id=params.integer(q, "id"), q=text, day=day,
            before_id=params.integer(q, "before"), limit=params.limit(q, 100)))
    except UserError as exc:
        error = str(exc)
    return page(request, "outgoing.html", 400 if error else 200,
                rows=found.rows if found else [], total=found.total if found else 0,
                next_link=_next_link("/audit/outgoing", q, found), q=search,
                ticket=q.get("ticket", ""), status=q.get("status", ""),
                statuses=outbox.STATUSES, error=error)


async def templates(request: web.Request) -> web.Response:
    b = backend(request)
    previews = await b.run(b.template_previews)
    return page(request, "templates.html", inline_styles=True, previews=previews)


async def forwarding(request: web.Request) -> web.Response:
    b = backend(request)
    try:
        found = await b.run(b.forwarding, params.limit(request.query, 100),
                            params.integer(request.query, "before"))
    except UserError as exc:
        return page(request, "error.html", 400, title="Bad request", message=str(exc))
    return page(request, "forwarding.html", rows=found.rows, total=found.total,
                next_link=_next_link("/forwarding", request.query, found))


async def spam_list(request: web.Request) -> web.Response:
    q = request.query
    show_all = q.get("state") == "all"
    b = backend(request)
    try:
        after = params.text(q, "after", 40).strip()
        found = await b.run(b.quarantine, None if show_all else spam_store.QUARANTINED,
                            params.limit(q, 100), params.queue_id(after) if after else None)
    except UserError as exc:
        return page(request, "error.html", 400, title="Bad request", message=str(exc))
    next_link = params.page_link("/spam", q, "after", found.next_after)
    notice = NOTICES.get(q.get("notice", ""), "")
    return page(request, "spam.html", rows=found.rows, total=found.total, next_link=next_link,
                show_all=show_all, notice=notice)


async def spam_message(request: web.Request) -> web.Response:
    b = backend(request)
    try:
        row = await b.run(b.quarantined, params.queue_id(request.match_info["queue_id"]))
    except NotFound as exc:
        return page(request, "error.html", 404, title="Not found", message=str(exc))
    return page(request, "spam_message.html", row=row)


async def spam_release(request: web.Request) -> web.Response:
    queue_id = params.queue_id(request.match_info["queue_id"])
    b = backend(request)
    try:
        result = await b.run(b.release, queue_id,
                             f"{actor(request).actor} (admin panel from {request.remote})")
    except UserError as exc:
        return page(request, "error.html", status_of(exc), title="Not released",
                    message=str(exc))
    log.info("admin: %s released from quarantine as %s (panel)", queue_id,
             result["released_as"])
    return see_other("/spam?" + urlencode({"notice": "released"}))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/", dashboard)
    r.add_get("/tickets", ticket_list)
    r.add_get(r"/tickets/{id:\d+}", ticket)
    for path, action in TICKET_FORMS.items():
        r.add_post(rf"/tickets/{{id:\d+}}/{path}", _form_handler(action))
    r.add_get("/audit/incoming", incoming)
    r.add_get("/audit/outgoing", outgoing)
    r.add_get("/forwarding", forwarding)
    r.add_get("/spam", spam_list)
    r.add_get("/spam/{queue_id}", spam_message)
    r.add_post("/spam/{queue_id}/release", spam_release)
    r.add_get("/templates", templates)
    download.add_routes(app, "")
