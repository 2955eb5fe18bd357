"""Organizations, their domains and their customers in the database.

Input: names, domains and routing from the administrator (CLI or `[[organizations]]` in the
config) and decisions from the pipeline. Output: rows in `organizations` and `org_domains` (a
domain belongs to at most one organization: the table's primary key), customers joined to them,
and listings. Write functions take a connection inside the caller's transaction.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import sqlite_utils

from mailgate.errors import NotFound, UserError
from mailgate.store.db import like_escape, like_pattern, now_iso


def _clean_domain(domain: str) -> str:
    d = domain.strip().lower().rstrip(".").lstrip("@")
    if not d or "." not in d or any(c.isspace() or c in "@/\\" for c in d):
        raise UserError(f"not a domain name: {domain!r}")
    return d


def org_id_by_name(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT id FROM organizations WHERE lower(name)=lower(?)",
                       (name,)).fetchone()
    if row is None:
        raise NotFound(f"no organization named {name!r}")
    return int(row[0])


def org_for_domain(conn: sqlite3.Connection, domain: str) -> int | None:
    row = conn.execute("SELECT organization_id FROM org_domains WHERE domain=?",
                       (domain.lower(),)).fetchone()
    return int(row[0]) if row else None


def org_name(conn: sqlite3.Connection, org_id: int | None) -> str:
    if org_id is None:
        return ""
    row = conn.execute("SELECT name FROM organizations WHERE id=?", (org_id,)).fetchone()
    return str(row[0]) if row else ""


def create_org(conn: sqlite3.Connection, name: str, domains: list[str], notes: str = "",
               auto_created: bool = False) -> int:
    name = name.strip()
    if not name:
        raise UserError("an organization needs a name")
    if conn.execute("SELECT 1 FROM organizations WHERE lower(name)=lower(?)",
                    (name,)).fetchone():
        raise UserError(f"an organization named {name!r} already exists")
    cur = conn.execute(
        "INSERT INTO organizations (name, notes, created_at, auto_created) VALUES (?,?,?,?)"
        " RETURNING id",
        (name, notes, now_iso(), int(auto_created)),
    )
    org_id = int(cur.fetchone()[0])
    for d in domains:
        add_domain(conn, org_id, d)
    return org_id


def add_domain(conn: sqlite3.Connection, org_id: int, domain: str) -> str:
    d = _clean_domain(domain)
    owner = org_for_domain(conn, d)
    if owner is not None and owner != org_id:
        raise UserError(f"domain {d} already belongs to organization {org_name(conn, owner)!r}")
    conn.execute("INSERT INTO org_domains (domain, organization_id) VALUES (?, ?)"
                 " ON CONFLICT DO NOTHING",
                 (d, org_id))
    return d


def remove_domain(conn: sqlite3.Connection, org_id: int, domain: str) -> None:
    d = _clean_domain(domain)
    cur = conn.execute("DELETE FROM org_domains WHERE domain=? AND organization_id=?",
                       (d, org_id))
    if cur.rowcount == 0:
        raise UserError(f"domain {d} does not belong to {org_name(conn, org_id)!r}")


def join_existing(conn: sqlite3.Connection, org_id: int, domain: str) -> int:
    """Customers at `domain` or its subdomains with no organization join `org_id`."""
    d = _clean_domain(domain)
    cur = conn.execute(
        "UPDATE customers SET organization_id=? WHERE organization_id IS NULL"
        " AND (lower(email) LIKE ? ESCAPE '\\' OR lower(email) LIKE ? ESCAPE '\\')",
        (org_id, "%@" + like_escape(d.lower()), "%@%." + like_escape(d.lower())),
    )
    conn.execute(
        "UPDATE tickets SET organization_id=? WHERE organization_id IS NULL AND requester_id IN"
        " (SELECT id FROM customers WHERE organization_id=?)", (org_id, org_id))
    return cur.rowcount


def set_route(conn: sqlite3.Connection, org_id: int, route: dict[str, Any]) -> None:
    conn.execute("UPDATE organizations SET on_new_ticket=? WHERE id=?",
                 (json.dumps(route) if route else None, org_id))


def route_of(conn: sqlite3.Connection, org_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT on_new_ticket FROM organizations WHERE id=?",
                       (org_id,)).fetchone()
    return json.loads(row[0]) if row and row[0] else {}


def next_round_robin(conn: sqlite3.Connection, key: str, agents: list[str]) -> str:
    row = conn.execute("SELECT position FROM round_robin WHERE key=?", (key,)).fetchone()
    position = int(row[0]) if row else 0
    conn.execute("INSERT INTO round_robin (key, position) VALUES (?, ?) ON CONFLICT(key)"
                 " DO UPDATE SET position=excluded.position", (key, position + 1))
    return agents[position % len(agents)]


def set_customer_org(conn: sqlite3.Connection, customer_id: int, org_id: int | None) -> None:
    conn.execute("UPDATE customers SET organization_id=? WHERE id=?", (org_id, customer_id))


def customer_org(conn: sqlite3.Connection, customer_id: int) -> int | None:
    row = conn.execute("SELECT organization_id FROM customers WHERE id=?",
                       (customer_id,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def sync_configured(conn: sqlite3.Connection, entries: list[dict[str, Any]]) -> None:
    """Create or update the `[[organizations]]` of the config (domains, notes, routing)."""
    for entry in entries:
        row = conn.execute("SELECT id FROM organizations WHERE lower(name)=lower(?)",
                           (entry["name"],)).fetchone()
        if row is None:
            org_id = create_org(conn, entry["name"], [], entry.get("notes", ""))
        else:
            org_id = int(row[0])
            conn.execute("UPDATE organizations SET notes=? WHERE id=?",
                         (entry.get("notes", ""), org_id))
        for d in entry.get("domains", []):
            add_domain(conn, org_id, d)
        set_route(conn, org_id, entry.get("on_new_ticket", {}))


# --- listings -------------------------------------------------------------------------------


def list_orgs(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    rows = list(db.query(
        "SELECT o.id, o.name, o.notes, o.created_at, o.auto_created, o.on_new_ticket,"
        " (SELECT COUNT(*) FROM customers c WHERE c.organization_id=o.id) AS customers,"
        " (SELECT COUNT(*) FROM tickets t WHERE t.organization_id=o.id) AS tickets,"
        " (SELECT COUNT(*) FROM tickets t WHERE t.organization_id=o.id"
        "  AND t.status IN ('open', 'pending_customer', 'pending_agent')) AS open_tickets"
        " FROM organizations o ORDER BY lower(o.name), o.name"))
    for r in rows:
        r["domains"] = [d[0] for d in db.execute(
            "SELECT domain FROM org_domains WHERE organization_id=? ORDER BY domain",
            [r["id"]]).fetchall()]
        r["auto_created"] = bool(r["auto_created"])
        r["on_new_ticket"] = json.loads(r["on_new_ticket"]) if r["on_new_ticket"] else {}
    return rows


def show_org(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    org_id = org_id_by_name(db.conn, name)
    org = next(o for o in list_orgs(db) if o["id"] == org_id)
    org["customer_list"] = list_customers(db, org=name)
    return org


def list_customers(db: sqlite_utils.Database, org: str | None = None, limit: int = 1000
                   ) -> list[dict[str, Any]]:
    sql = ("SELECT c.id, c.email, c.name, o.name AS organization, c.created_at"
           " FROM customers c LEFT JOIN organizations o ON o.id = c.organization_id")
    params: list[Any] = []
    if org:
        sql += " WHERE c.organization_id = ?"
        params.append(org_id_by_name(db.conn, org))
    sql += " ORDER BY c.email LIMIT ?"
    params.append(limit)
    return list(db.query(sql, params))


def find_customers(db: sqlite_utils.Database, q: str = "", org: str | None = None,
                   limit: int = 50, after: str | None = None, offset: int = 0
                   ) -> tuple[list[dict[str, Any]], int]:
    """A page of customers by address (`after`: the last address of the page before; else
    from `offset`), each with their ticket counts, and how many match: `q` a substring of the
    name or address."""
    where: list[str] = []
    params: list[Any] = []
    if q.strip():
        pattern = like_pattern(q.strip().lower())
        where.append("(lower(c.email) LIKE ? ESCAPE '\\' OR lower(c.name) LIKE ? ESCAPE '\\')")
        params += [pattern, pattern]
    if org:
        where.append("c.organization_id = ?")
        params.append(org_id_by_name(db.conn, org))
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    total = int(db.execute(f"SELECT COUNT(*) FROM customers c{clause}", params).fetchone()[0])
    if after is not None:
        clause += (" AND " if clause else " WHERE ") + "c.email > ?"
        params.append(after)
    rows = list(db.query(
        "SELECT c.id, c.email, c.name, o.name AS organization, c.created_at,"
        " (SELECT COUNT(*) FROM tickets t WHERE t.requester_id = c.id) AS tickets,"
        " (SELECT COUNT(*) FROM tickets t WHERE t.requester_id = c.id"
        "  AND t.status IN ('open', 'pending_customer', 'pending_agent')) AS open_tickets"
        " FROM customers c LEFT JOIN organizations o ON o.id = c.organization_id"
        f"{clause} ORDER BY c.email LIMIT ? OFFSET ?", [*params, limit, offset]))
    return rows, total


def get_customer(db: sqlite_utils.Database, customer_id: int) -> dict[str, Any]:
    """One customer (NotFound when there is none)."""
    rows = list(db.query(
        "SELECT c.id, c.email, c.name, o.name AS organization, c.created_at"
        " FROM customers c LEFT JOIN organizations o ON o.id = c.organization_id"
        " WHERE c.id = ?", [customer_id]))
    if not rows:
        raise NotFound(f"no customer {customer_id}")
    return rows[0]
