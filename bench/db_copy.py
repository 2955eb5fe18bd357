"""How fast `mailgate.store.copy.copy_database` moves an installation to PostgreSQL.

Usage: python bench/db_copy.py [--tickets 5000] [--batch-rows 1000]

Input:  command-line options only. It builds a SQLite installation with the real store
        functions (`mailgate.store.tickets`, `.outbound`, `.audit` on `open_db`'s database):
        per ticket a customer, the ticket, the customer's mail (parsed once by the real parser,
        then varied) with its Message-ID and participant, an incoming-audit row, and a queued
        acknowledgement of 4 KB in `outbound.raw`; then upgrades it to the head revision. The
        fill is set-up, not measured. A PostgreSQL of its own is started with tests/pgserver.py
        (Debian's binaries; without them the benchmark says so and exits 1).
Output: on stdout, rows/s of the copy to PostgreSQL and of the same copy to a SQLite file,
        and each as a ratio to a baseline measured in the same run: reading every table of the
        source through SQLAlchemy once, in primary-key order, without writing anything (the
        least any verified copy must do). Exit status 0 when both copies verified, 1 otherwise.
Trust:  developer tool; everything it reads it made itself in a temporary directory, removed
        at the end; PostgreSQL listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pgserver import NOT_INSTALLED, PgServer, find_bindir

from mailgate.model import Address, Envelope
from mailgate.parsing.parse import parse
from mailgate.store import outbound, tickets
from mailgate.store.audit import IncomingAudit, record_incoming
from mailgate.store.copy import copy_database
from mailgate.store.db import now_iso, open_db, transaction
from mailgate.store.engine import make_engine
from mailgate.store.schema import metadata
from mailgate.store.upgrade import upgrade

TEMPLATE = (b"From: Jane Doe <jane@customer.test>\r\nTo: support@example.com\r\n"
            b"Subject: Printer on fire\r\nMessage-ID: <m@customer.test>\r\n\r\n"
            + "Grüße — the printer is on fire again. ".encode() * 40 + b"\r\n")
RAW_ACK = b"Subject: Re: Printer on fire\r\n\r\n" + b"x" * 4000 + b"\r\n"


def fill(path: Path, count: int) -> None:
    db = open_db(path)
    template = parse(TEMPLATE)
    now = now_iso()
    with transaction(db) as conn:
        for n in range(count):
            email = f"customer{n}@client{n % 97}.test"
            customer = tickets.get_or_create_customer(conn, Address(email, f"Customer {n}"),
                                                      now)
            subject = f"Printer on fire #{n} — ärgerlich"
            ticket = tickets.create_ticket(conn, subject, customer, now,
                                           mailbox="support@example.com")
            parsed = replace(template, message_id=f"m{n}@client.test", subject=subject)
            qid = f"Q{n:010d}"
            row = tickets.add_incoming_message(conn, ticket, qid, parsed,
                                               f"raw/2026/01/01/{qid}.eml", "new", now)
            tickets.add_participant(conn, ticket, email, "requester", now)
            env = Envelope(qid, time.time(), "127.0.0.1", "client.test", email,
                           ("support@example.com",), len(TEMPLATE))
            record_incoming(conn, IncomingAudit(env, "created_ticket", ticket_id=ticket,
                                                message_row=row, subject=subject,
                                                from_addr=email))
            outbound.enqueue(conn, ticket_id=ticket, kind="new_ticket_ack", automatic=True,
                             to_addr=email, subject=f"Re: {subject}",
                             message_id=f"ack{n}@example.com", raw=RAW_ACK, queue_id=qid)
    db.conn.close()
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()


def read_all(url: str, batch_rows: int) -> int:
    """The baseline: every row of every table read once, streamed, in primary-key order."""
    engine = make_engine(url)
    rows = 0
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(yield_per=batch_rows)
            with conn.begin():
                for table in metadata.sorted_tables:
                    result = conn.execute(sa.select(*table.columns)
                                          .order_by(*table.primary_key.columns))
                    for part in result.partitions():
                        rows += len(part)
    finally:
        engine.dispose()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tickets", type=int, default=5000)
    ap.add_argument("--batch-rows", type=int, default=1000)
    args = ap.parse_args()
    bindir = find_bindir()
    if bindir is None:
        print(NOT_INSTALLED)
        return 1
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-copy-") as tmp:
        source = Path(tmp) / "source.db"
        t0 = time.monotonic()
        fill(source, args.tickets)
        print(f"filled {args.tickets} tickets in {time.monotonic() - t0:.1f} s (set-up)")
        surl = f"sqlite:///{source}"
        server = PgServer(bindir).start()
        try:
            t0 = time.monotonic()
            rows = read_all(surl, args.batch_rows)
            base = time.monotonic() - t0
            print(f"baseline, reading the source once: {rows} rows in {base:.2f} s"
                  f" ({rows / base:.0f} rows/s)")
            for name, target in (("PostgreSQL", server.create_database()),
                                 ("SQLite", f"sqlite:///{Path(tmp) / 'target.db'}")):
                report = copy_database(surl, target, batch_rows=args.batch_rows)
                assert report.rows == rows, (report.rows, rows)
                print(f"copy to {name}: {report.rows} rows in {report.seconds:.2f} s"
                      f" ({report.rows_per_second:.0f} rows/s), verified;"
                      f" {report.seconds / base:.1f}x the baseline's time")
                slowest = max(report.tables, key=lambda t: t.seconds)
                print(f"  slowest table: {slowest.name}, {slowest.rows} rows,"
                      f" {slowest.seconds:.2f} s")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
