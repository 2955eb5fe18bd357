"""Threading look-up benchmark: does finding a reply's ticket stay fast as the database grows?

Usage: python bench/thread_lookup.py [--sizes 1000,1000000] [--lookups 5000] [--warmup 1000]
                                 [--seed 1] [--keep DIR]

Input:  command-line options only. For each size it creates a real mailgate database with
        `mailgate.store.db.open_db` (the real schema, indexes and migrations) and fills it with
        that many tickets of three messages each (customer → agent → customer), their
        Message-IDs in `message_ids` and their participants, using bulk inserts with
        `synchronous=OFF` and `journal_mode=OFF` while filling only (WAL and synchronous=FULL
        are restored afterwards, and the look-ups use a fresh `open_db` connection). The fill is
        set-up and is not measured.
Output: on stdout, the fill time of each size, the EXPLAIN QUERY PLAN of every SQL statement
        the look-ups ran (flagging any SCAN), and the time per look-up of the real
        `mailgate.threading.find_ticket` for each size (mean, median, p95, and the median per
        kind of reply), with the ratio of each size to the smallest (goal: within 2x; reported,
        never enforced). Exit status 0 when every look-up found the expected ticket by the
        expected method and no plan scans a table; 1 otherwise; 2 on bad usage.
Trust:  developer tool for a trusted local machine. Everything it reads it generated itself;
        the databases go to a fresh temporary directory that is removed at the end, or to
        --keep DIR, where they are left for inspection (existing files are never overwritten).

Method: the replies are real `ParsedMail` objects made by `mailgate.parsing.parse.parse` from
composed bytes: In-Reply-To/References pointing at random existing messages, at unknown ids,
at our own
Message-IDs missing from the index, a signed reply address (`Signer.reply_address`), a forged
one, and `[#id]` subject tags from a participant and from a stranger. The look-ups are the
pipeline's own (`Deliverer(Policy(...), None, signer)._lookups(conn)`); each `find_ticket` call
runs inside BEGIN IMMEDIATE … ROLLBACK like the pipeline's transaction (outside the timer), with
the garbage collector paused, after a warm-up, and the sizes take turns in rounds so that noise
from the shared machine falls on all of them alike.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory comes first on sys.path and its name would shadow the
# standard library's `threading` for every later import: take that directory off the path
# before importing anything else (hence the imports below this line).
# ruff: noqa: E402
sys.path[:] = [p for p in sys.path
               if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse
import gc
import hashlib
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, cast

from mailgate.model import ParsedMail
from mailgate.parsing.parse import parse
from mailgate.pipeline.deliver import Deliverer, Policy
from mailgate.store.db import open_db
from mailgate.threading import Lookups, find_ticket
from mailgate.threading.token import Signer

DOMAIN = "example.com"
MAILBOX = f"support@{DOMAIN}"
AGENT = f"agent@{DOMAIN}"
SECRET = b"mailgate-bench-threading-secret!"  # 32 bytes, only ever used on generated data
GOAL_RATIO = 2.0
FILL_CHUNK = 20_000  # tickets per executemany batch
COMMIT_EVERY = 100_000  # tickets per fill transaction
FILL_CACHE_KIB = 131_072  # page cache of the fill connection only (128 MiB)
ROUNDS = 5
PLAN_SAMPLE = 300  # replies per size whose SQL is recorded for EXPLAIN QUERY PLAN
STATUSES = ("open", "pending_customer", "pending_agent", "resolved", "closed")
BASE_TS = 1_700_000_000

# kind of reply → relative weight in the mix
KINDS: dict[str, int] = {
    "in-reply-to": 35,  # In-Reply-To: an existing message of the ticket
    "references": 10,  # In-Reply-To unknown, References: the ticket's three messages
    "references-deep": 5,  # References: nine unknown ids, the ticket's first message oldest
    "token": 15,  # sent to the ticket's signed reply address
    "our-id-lost": 5,  # In-Reply-To: one of our Message-IDs that the index does not hold
    "subject": 10,  # [#id] from the ticket's requester, ids unknown
    "stranger-tag": 5,  # [#id] from someone who is not a participant → new ticket
    "forged-token": 5,  # support+<id>-<bad mac>, ids unknown → new ticket
    "unknown": 10,  # In-Reply-To and References all unknown → new ticket
}


# --- the generated data set -----------------------------------------------------------------


def _hex(*parts: object, size: int = 10) -> str:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=size).hexdigest()


def customers_for(n: int) -> int:
    """Some customers open more than one ticket: 7 customers for every 10 tickets."""
    return max(1, n * 7 // 10)


def customer_of(ticket: int, n: int) -> int:
    return (ticket - 1) % customers_for(n) + 1


def customer_email(customer: int) -> str:
    return f"customer{customer}@mail{customer % 97}.example.net"


def customer_message_id(ticket: int, k: int) -> str:
    """A client's Message-ID (random-looking, so index inserts and look-ups are random)."""
    return f"{_hex('c', ticket, k)}@mail{ticket % 31}.example.net"


def agent_message_id(signer: Signer, ticket: int) -> str:
    """Our own Message-ID, in the format of `Signer.message_id` (with a reproducible tail)."""
    return f"{signer.sign('ticket', ticket)}.{_hex('a', ticket, size=8)}@{DOMAIN}"


def thread_ids(signer: Signer, ticket: int) -> tuple[str, str, str]:
    return (customer_message_id(ticket, 0), agent_message_id(signer, ticket),
            customer_message_id(ticket, 2))


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class FillResult:
    tickets: int
    seconds: float
    rows: dict[str, int]
    file_bytes: int


def _chunk_rows(signer: Signer, n: int, first: int, last: int) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of tickets first..last (inclusive), as the pipeline would have written them."""
    ncust = customers_for(n)
    rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    to_us = json.dumps([MAILBOX])
    for t in range(first, last + 1):
        c = customer_of(t, n)
        email = customer_email(c)
        ts = BASE_TS + t * 60
        created, updated = _iso(ts), _iso(ts + 7200)
        if t <= ncust:
            rows["customers"].append((c, email, f"Customer {c}", created))
        subject = f"Order {t} does not arrive"
        status = STATUSES[t % len(STATUSES)]
        rows["tickets"].append((t, subject, c, status, AGENT if t % 3 else None, created,
                                updated, updated if status == "closed" else None))
        c0, a1, c2 = thread_ids(signer, t)
        row = 3 * (t - 1) + 1
        q0, q2 = _hex("q", t, 0, size=6), _hex("q", t, 2, size=6)
        text0 = f"Hello, my order {t} has not arrived yet. Can you check it please?"
        text1 = f"Hello, we have asked the carrier about order {t} and will come back to you."
        text2 = "Thank you, it arrived today."
        rows["messages"] += [
            (row, t, "in", q0, c0, "", "[]", email, f"Customer {c}", to_us, "[]", subject,
             created, text0, "", f"raw/{q0}.eml", "[]", "new", 0, "", created, text0, "normal"),
            (row + 1, t, "out", None, a1, c0, json.dumps([c0]), AGENT, "Agent",
             json.dumps([email]), "[]", f"Re: {subject}", _iso(ts + 3600), text1, "", None,
             "[]", "agent", 0, "", _iso(ts + 3600), None, None),
            (row + 2, t, "in", q2, c2, a1, json.dumps([c0, a1]), email, f"Customer {c}", to_us,
             "[]", f"Re: {subject}", updated, text2, "", f"raw/{q2}.eml", "[]", "in-reply-to",
             0, "", updated, text2, "normal"),
        ]
        rows["message_ids"] += [(c0, t, row), (a1, t, row + 1), (c2, t, row + 2)]
        rows["participants"].append((t, email, "requester", created))
        if t % 10 == 0:
            rows["participants"].append((t, f"colleague{t}@mail{c % 97}.example.net", "cc",
                                         created))
    return rows


_INSERTS = {
    "customers": "INSERT INTO customers (id, email, name, created_at) VALUES (?, ?, ?, ?)",
    "tickets": "INSERT INTO tickets (id, subject, requester_id, status, assignee, created_at,"
               " updated_at, closed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "messages": "INSERT INTO messages (id, ticket_id, direction, queue_id, message_id,"
                " in_reply_to, references_, from_addr, from_name, to_addrs, cc_addrs, subject,"
                " date, text, html, raw_path, defects, matched_by, internal, internal_reason,"
                " created_at, reply_text, classification)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    # the statement of mailgate.store.tickets.index_message_id
    "message_ids": "INSERT OR IGNORE INTO message_ids (message_id, ticket_id, message_row)"
                   " VALUES (?, ?, ?)",
    # the statement of mailgate.store.tickets.add_participant
    "participants": "INSERT OR IGNORE INTO participants (ticket_id, email, role, added_at)"
                    " VALUES (?, ?, ?, ?)",
}


def _pragma(conn: sqlite3.Connection, sql: str, expect: str | None = None) -> None:
    row = conn.execute(sql).fetchone()
    if expect is not None and (row is None or str(row[0]).lower() != expect):
        raise RuntimeError(f"{sql} answered {row!r}, expected {expect}")


def fill(path: Path, n: int, signer: Signer) -> FillResult:
    start = time.perf_counter()
    db = open_db(path)
    conn = db.conn
    try:
        _pragma(conn, "PRAGMA journal_mode=OFF", "off")  # set-up only: restored below
        _pragma(conn, "PRAGMA synchronous=OFF")
        _pragma(conn, f"PRAGMA cache_size=-{FILL_CACHE_KIB}")
        first = 1
        while first <= n:
            last_tx = min(n, first + COMMIT_EVERY - 1)
            conn.execute("BEGIN IMMEDIATE")
            while first <= last_tx:
                last = min(last_tx, first + FILL_CHUNK - 1)
                for table, rows in _chunk_rows(signer, n, first, last).items():
                    conn.executemany(_INSERTS[table], rows)
                first = last + 1
            conn.execute("COMMIT")
        _pragma(conn, "PRAGMA journal_mode=WAL", "wal")
        _pragma(conn, "PRAGMA synchronous=FULL")
        counts = {table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                  for table in _INSERTS}
        _pragma(conn, "PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return FillResult(n, time.perf_counter() - start, counts, path.stat().st_size)


# --- the replies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    kind: str
    parsed: ParsedMail
    rcpt_to: tuple[str, ...]
    expect_ticket: int | None
    expect_method: str


def _unknown_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(96):024x}@mx{rng.randrange(100)}.elsewhere.example.org"


def _compose(*, sender: str, to: str, subject: str, in_reply_to: Sequence[str],
             references: Sequence[str], message_id: str, ts: int) -> bytes:
    lines = [
        f"From: Someone <{sender}>",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {format_datetime(datetime.fromtimestamp(ts, UTC))}",
        f"Message-ID: <{message_id}>",
    ]
    if in_reply_to:
        lines.append("In-Reply-To: " + " ".join(f"<{m}>" for m in in_reply_to))
    if references:
        lines.append("References: " + "\r\n ".join(f"<{m}>" for m in references))
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "",
              "Thanks, see my answer below.", "", "> quoted text", ""]
    return "\r\n".join(lines).encode()


def make_reply(kind: str, n: int, rng: random.Random, signer: Signer) -> Reply:
    t = rng.randint(1, n)
    ids = thread_ids(signer, t)
    requester = customer_email(customer_of(t, n))
    sender, to, rcpt = requester, MAILBOX, (MAILBOX,)
    subject = f"Re: Order {t} does not arrive"
    irt: list[str] = []
    refs: list[str] = []
    expect: tuple[int | None, str]
    if kind == "in-reply-to":
        k = rng.randrange(3)
        irt, refs, expect = [ids[k]], list(ids[: k + 1]), (t, "in-reply-to")
    elif kind == "references":
        irt, refs, expect = [_unknown_id(rng)], list(ids), (t, "references")
    elif kind == "references-deep":
        refs, expect = [ids[0]] + [_unknown_id(rng) for _ in range(9)], (t, "references")
    elif kind == "token":
        to = signer.reply_address(MAILBOX, t)
        rcpt, expect = (to,), (t, "token")
    elif kind == "our-id-lost":
        lost = f"{signer.sign('ticket', t)}.{rng.getrandbits(64):016x}@{DOMAIN}"
        irt, refs, expect = [lost], [lost], (t, "in-reply-to")
    elif kind == "subject":
        subject = f"Re: [#{t}] Order {t} does not arrive"
        irt, refs, expect = [_unknown_id(rng)], [_unknown_id(rng)], (t, "subject")
    elif kind == "stranger-tag":
        sender = f"stranger{rng.randrange(10**6)}@other.example.org"
        subject = f"Re: [#{t}] Order {t} does not arrive"
        irt, expect = [_unknown_id(rng)], (None, "new")
    elif kind == "forged-token":
        to = f"support+{t}-{'a' * 16}@{DOMAIN}"
        rcpt, irt, expect = (to,), [_unknown_id(rng)], (None, "new")
    elif kind == "unknown":
        irt = [_unknown_id(rng)]
        refs, expect = [_unknown_id(rng) for _ in range(3)] + irt, (None, "new")
    else:
        raise ValueError(kind)
    raw = _compose(sender=sender, to=to, subject=subject, in_reply_to=irt, references=refs,
                   message_id=_unknown_id(rng), ts=BASE_TS + rng.randrange(10**8))
    return Reply(kind, parse(raw), rcpt, *expect)


def make_replies(count: int, n: int, rng: random.Random, signer: Signer) -> list[Reply]:
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=count)
    return [make_reply(kind, n, rng, signer) for kind in kinds]


# --- measuring ------------------------------------------------------------------------------


class _RecordingConnection:
    """Passes `execute` through to a connection and remembers each distinct SQL statement."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.statements: dict[str, tuple[Any, ...]] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        self.statements.setdefault(sql, tuple(params))
        return self._conn.execute(sql, params)


def lookups_for(conn: Any, signer: Signer) -> Lookups:
    policy = Policy(domains=frozenset({DOMAIN}), agents=frozenset({AGENT}))
    return Deliverer(policy, None, signer)._lookups(cast(sqlite3.Connection, conn))


@dataclass
class Plan:
    sql: str
    lines: list[str]

    @property
    def scans(self) -> bool:
        return any(line.lstrip().startswith("SCAN ") for line in self.lines)


def query_plans(conn: sqlite3.Connection, replies: Sequence[Reply], signer: Signer
                ) -> list[Plan]:
    recorder = _RecordingConnection(conn)
    lookups = lookups_for(recorder, signer)
    for reply in replies:
        find_ticket(reply.parsed, reply.rcpt_to, lookups)
    plans = []
    for sql, params in recorder.statements.items():
        rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        depth: dict[int, int] = {0: 0}
        lines = []
        for node, parent, _unused, detail in rows:
            depth[node] = depth.get(parent, 0) + 1
            lines.append("  " * depth[node] + str(detail))
        plans.append(Plan(sql, lines))
    return plans


@dataclass
class Timings:
    ns: list[int]
    by_kind: dict[str, list[int]]
    wrong: list[str]


def run_lookups(conn: sqlite3.Connection, lookups: Lookups, replies: Sequence[Reply],
                into: Timings | None = None) -> Timings:
    out = into or Timings([], defaultdict(list), [])
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for reply in replies:
            conn.execute("BEGIN IMMEDIATE")
            start = clock()
            match = find_ticket(reply.parsed, reply.rcpt_to, lookups)
            elapsed = clock() - start
            conn.execute("ROLLBACK")
            out.ns.append(elapsed)
            out.by_kind[reply.kind].append(elapsed)
            if (match.ticket_id, match.method) != (reply.expect_ticket, reply.expect_method):
                out.wrong.append(f"{reply.kind}: expected {reply.expect_ticket}"
                                 f" by {reply.expect_method}, got {match.ticket_id}"
                                 f" by {match.method} ({match.detail})")
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def _slices(items: Sequence[Reply], parts: int) -> Iterator[Sequence[Reply]]:
    size = -(-len(items) // parts)
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _us(ns: float) -> str:
    return f"{ns / 1000:8.1f}"


def _p95(values: Sequence[int]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else float(values[0])


# --- the command ----------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be whole numbers of at least 1")
    return sizes


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=_sizes, default=[1000, 1_000_000],
                    help="ticket counts, comma-separated (default 1000,1000000)")
    ap.add_argument("--lookups", type=_positive, default=5000,
                    help="timed look-ups per size (default 5000)")
    ap.add_argument("--warmup", type=_positive, default=1000,
                    help="untimed look-ups per size first (default 1000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="write the databases to DIR and keep them (default: a temporary"
                         " directory, removed at the end)")
    args = ap.parse_args(argv)

    if args.keep is not None:
        workdir = args.keep.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        taken = [workdir / f"threading-{n}.db" for n in args.sizes
                 if (workdir / f"threading-{n}.db").exists()]
        if taken:
            ap.error(f"{taken[0]} already exists: remove it or choose another --keep directory")
    else:
        workdir = Path(tempfile.mkdtemp(prefix="mailgate-bench-threading-"))

    signer = Signer(SECRET)
    conns: dict[int, sqlite3.Connection] = {}
    try:
        print(f"threading look-up benchmark: sizes {args.sizes}, {args.lookups} look-ups per"
              f" size after {args.warmup} warm-up, seed {args.seed}, SQLite"
              f" {sqlite3.sqlite_version}, in {workdir}")
        print("\n== fill (set-up, not measured)")
        for n in args.sizes:
            result = fill(workdir / f"threading-{n}.db", n, signer)
            rows = ", ".join(f"{k} {v:,}" for k, v in result.rows.items())
            print(f"  {n:>10,} tickets: {result.seconds:7.1f} s"
                  f" ({result.file_bytes / 2**20:,.0f} MiB; {rows})")

        rng = random.Random(args.seed)
        lookups: dict[int, Lookups] = {}
        warm: dict[int, list[Reply]] = {}
        timed: dict[int, list[Reply]] = {}
        start = time.perf_counter()
        for n in args.sizes:
            conns[n] = open_db(workdir / f"threading-{n}.db").conn  # the real settings
            lookups[n] = lookups_for(conns[n], signer)
            warm[n] = make_replies(args.warmup, n, rng, signer)
            timed[n] = make_replies(args.lookups, n, rng, signer)
        print(f"\n(parsed {sum(len(warm[n]) + len(timed[n]) for n in args.sizes):,} replies"
              f" in {time.perf_counter() - start:.1f} s)")

        print("\n== EXPLAIN QUERY PLAN of every statement the look-ups ran")
        scanning: list[str] = []
        for n in args.sizes:
            print(f"  -- {n:,} tickets")
            for plan in query_plans(conns[n], warm[n][:PLAN_SAMPLE], signer):
                flag = "   <-- SCAN" if plan.scans else ""
                print(f"  {plan.sql}{flag}")
                for line in plan.lines:
                    print(f"  {line}")
                if plan.scans:
                    scanning.append(f"{n:,}: {plan.sql}")

        for n in args.sizes:
            run_lookups(conns[n], lookups[n], warm[n])
        results = {n: Timings([], defaultdict(list), []) for n in args.sizes}
        parts = {n: list(_slices(timed[n], ROUNDS)) for n in args.sizes}
        for r in range(ROUNDS):
            for n in (args.sizes if r % 2 == 0 else reversed(args.sizes)):
                if r < len(parts[n]):
                    run_lookups(conns[n], lookups[n], parts[n][r], results[n])

        print(f"\n== find_ticket, microseconds per look-up ({ROUNDS} interleaved rounds)")
        print(f"  {'tickets':>10}  {'mean':>8}  {'median':>8}  {'p95':>8}  {'n':>6}")
        for n in args.sizes:
            ns = results[n].ns
            print(f"  {n:>10,}  {_us(statistics.fmean(ns))}  {_us(statistics.median(ns))}"
                  f"  {_us(_p95(ns))}  {len(ns):>6}")
        print("\n  median by kind of reply:")
        print(f"  {'kind':<16}" + "".join(f"{n:>12,}" for n in args.sizes))
        for kind in KINDS:
            cells = [results[n].by_kind.get(kind, []) for n in args.sizes]
            print(f"  {kind:<16}" + "".join(
                f"{statistics.median(c) / 1000:12.1f}" if c else f"{'-':>12}" for c in cells))

        small = args.sizes[0]
        base_mean = statistics.fmean(results[small].ns)
        base_median = statistics.median(results[small].ns)
        for n in args.sizes[1:]:
            mean_ratio = statistics.fmean(results[n].ns) / base_mean
            median_ratio = statistics.median(results[n].ns) / base_median
            verdict = "within" if max(mean_ratio, median_ratio) <= GOAL_RATIO else "OVER"
            print(f"\n  ratio {n:,} / {small:,} tickets: mean {mean_ratio:.2f}x,"
                  f" median {median_ratio:.2f}x ({verdict} the {GOAL_RATIO:g}x goal)")

        wrong = [f"{n:,}: {w}" for n in args.sizes for w in results[n].wrong]
        for n in args.sizes:
            wrong += [f"{n:,} (warm-up): {w}" for w in run_lookups(
                conns[n], lookups[n], warm[n][:PLAN_SAMPLE]).wrong]
        print()
        if wrong:
            print(f"FAIL: {len(wrong)} look-ups matched the wrong ticket or method, e.g.:")
            for w in wrong[:10]:
                print(f"  {w}")
        else:
            print("all look-ups found the expected ticket by the expected method")
        if scanning:
            print("FAIL: a look-up query scans a table:")
            for s in scanning:
                print(f"  {s}")
        else:
            print("no look-up query scans a table")
        return 1 if wrong or scanning else 0
    finally:
        for conn in conns.values():
            conn.close()
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"databases kept in {workdir}")


if __name__ == "__main__":
    sys.exit(main())
