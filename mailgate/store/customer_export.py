"""Everything stored about one customer, in a zip (`mailgate customers export EMAIL`).

Input: the store (trusted rows; their values came from mail and are written as data), the
node's `data_dir`, an e-mail address an administrator typed (untrusted form: looked up as a
bound parameter, lower-cased), the erasure key (`erasure.key_for`) and where to write.
Output: a zip holding `customer.json` — the customer record and organization, the tickets
they requested or take part in (as participant or sender) with their messages (internal
notes left out: they are the team's, not the customer's) and each attachment's metadata, the
audit rows naming the address (incoming, outgoing, quarantine, ticket actions) — plus
`raw/<message id>.eml` for each message whose raw mail is kept (incoming as received,
outgoing as sent) and `attachments/<attachment id>-<name>` for each attachment whose file is
kept. Names inside the zip are made here, never taken from mail. The export is recorded in
`data_actions` under the address's keyed hash (never the address itself). UserError when no
customer has the address.
"""

from __future__ import annotations

import contextlib
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailgate.errors import UserError
from mailgate.store import files, filestore
from mailgate.store.db import like_pattern, transaction
from mailgate.store.erasure import subject_for
from mailgate.store.retention import record_action

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ExportSummary:
    customer_id: int
    tickets: int
    messages: int
    raw_files: int
    attachments: int
    audit_rows: int
    path: str


def _rows(db: Any, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = db.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def find_customer(db: Any, email: str) -> dict[str, Any]:
    """The customer record of `email`; UserError (one line) when there is none."""
    address = email.strip().lower()
    found = _rows(db, "SELECT c.id, c.email, c.name, c.created_at, c.organization_id,"
                  " o.name AS organization FROM customers c LEFT JOIN organizations o"
                  " ON o.id = c.organization_id WHERE lower(c.email) = ?", [address])
    if not found:
        raise UserError(f"no customer with the address {address!r}")
    return found[0]


def customer_ticket_ids(db: Any, customer_id: int, address: str) -> tuple[list[int], list[int]]:
    """(tickets the customer requested, other tickets they take part in or wrote to)."""
    requested = [int(r[0]) for r in db.execute(
        "SELECT id FROM tickets WHERE requester_id = ? ORDER BY id", [customer_id])]
    others = sorted({int(r[0]) for r in db.execute(
        "SELECT ticket_id FROM participants WHERE lower(email) = ?"
        " UNION SELECT ticket_id FROM messages WHERE lower(from_addr) = ?",
        [address, address])} - set(requested))
    return requested, others


def audit_rows(db: Any, address: str) -> dict[str, list[dict[str, Any]]]:
    """The audit rows that name `address` (as sender, recipient or in their details)."""
    pattern = like_pattern(address)
    return {
        "incoming": _rows(db, "SELECT id, received_at, queue_id, client_ip, mail_from,"
                          " rcpt_to, message_id, from_addr, subject, size, action, ticket_id,"
                          " reason, classification FROM audit_incoming"
                          " WHERE lower(mail_from) = ? OR lower(from_addr) = ?"
                          " OR lower(rcpt_to) LIKE ? ESCAPE '\\' ORDER BY id",
                          [address, address, pattern]),
        "outgoing": _rows(db, "SELECT id, ticket_id, kind, to_addr, subject, message_id,"
                          " status, attempts, created_at, sent_at FROM outbound"
                          " WHERE lower(to_addr) = ? ORDER BY id", [address]),
        "quarantine": _rows(db, "SELECT queue_id, received_at, action, score, reason, state"
                            " FROM spam WHERE lower(envelope) LIKE ? ESCAPE '\\'"
                            " ORDER BY received_at", [pattern]),
        "ticket_actions": _rows(db, "SELECT id, ticket_id, at, actor, action, details"
                                " FROM ticket_actions WHERE lower(details) LIKE ? ESCAPE '\\'"
                                " ORDER BY id", [pattern]),
    }


def export_customer(db: Any, data_dir: Path, email: str, key: bytes, output: Path,
                    actor: str = "cli") -> ExportSummary:
    customer = find_customer(db, email)
    address = customer["email"].lower()
    requested, others = customer_ticket_ids(db, customer["id"], address)
    org = None
    if customer["organization_id"] is not None:
        org = {"name": customer["organization"], "domains": [r[0] for r in db.execute(
            "SELECT domain FROM org_domains WHERE organization_id = ? ORDER BY domain",
            [customer["organization_id"]])]}
    tickets = []
    raws: list[tuple[str, int, str | None, int | None]] = []  # (zip name, row, path, outbound)
    blobs: list[tuple[str, str]] = []  # (zip name, sha256)
    n_messages = 0
    for ticket_id in requested + others:
        ticket = _rows(db, "SELECT id, subject, status, created_at, updated_at, closed_at,"
                       " priority, mailbox FROM tickets WHERE id = ?", [ticket_id])[0]
        ticket["role"] = "requester" if ticket_id in requested else "participant"
        messages = _rows(db, "SELECT id, direction, from_addr, from_name, to_addrs, cc_addrs,"
                         " subject, date, text, created_at, raw_path, outbound_id"
                         " FROM messages WHERE ticket_id = ? AND internal = 0 ORDER BY id",
                         [ticket_id])
        for m in messages:
            for key_ in ("to_addrs", "cc_addrs"):
                with contextlib.suppress(ValueError):
                    m[key_] = json.loads(m[key_] or "[]")
            m["attachments"] = _rows(db, "SELECT id, filename, content_type, size, sha256"
                                     " FROM attachments WHERE message_row = ? ORDER BY id",
                                     [m["id"]])
            for a in m["attachments"]:
                name = _SAFE.sub("_", a["filename"] or "file").strip("._")[:80] or "file"
                blobs.append((f"attachments/{a['id']}-{name}", a["sha256"]))
            raws.append((f"raw/{m['id']}.eml", m["id"], m.pop("raw_path"),
                         m.pop("outbound_id")))
        n_messages += len(messages)
        ticket["messages"] = messages
        tickets.append(ticket)
    audits = audit_rows(db, address)
    document = {"customer": {k: customer[k] for k in ("id", "email", "name", "created_at")},
                "organization": org, "tickets": tickets, "audit": audits}
    written_raw = written_blobs = 0
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("customer.json", json.dumps(document, indent=2, ensure_ascii=False,
                                                    default=str))
            for name, _row, relpath, outbound_id in raws:
                data = _raw(db, data_dir, relpath, outbound_id)
                if data is not None:
                    zf.writestr(name, data)
                    written_raw += 1
            for name, sha in blobs:
                try:
                    zf.writestr(name, filestore.read(db, data_dir, files.blob_relpath(sha)))
                    written_blobs += 1
                except FileNotFoundError:
                    continue
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    n_audit = sum(len(v) for v in audits.values())
    summary = ExportSummary(customer["id"], len(tickets), n_messages, written_raw,
                            written_blobs, n_audit, str(output))
    with transaction(db) as conn:
        record_action(conn, "export", actor, subject_for(key, address), json.dumps({
            "tickets": [t["id"] for t in tickets], "messages": n_messages,
            "raw_files": written_raw, "attachments": written_blobs, "audit_rows": n_audit}))
    return summary


def _raw(db: Any, data_dir: Path, relpath: str | None, outbound_id: int | None
         ) -> bytes | None:
    if relpath:
        try:
            return filestore.read(db, data_dir, relpath)
        except FileNotFoundError:
            return None
    if outbound_id:
        row = db.execute("SELECT raw FROM outbound WHERE id = ?", [outbound_id]).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None
    return None
