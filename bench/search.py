"""Ticket search benchmark: how long does a full-text search take on a large desk?

Usage: python bench/search.py [--tickets 100000] [--queries 200] [--seed 1] [--keep DIR]

Input:  command-line options only. It makes a real mailgate database with
        `mailgate.store.db.open_db` (schema, FTS5 indexes and their triggers) and fills it with
        that many tickets, one customer and two messages each (about 60 words of text drawn
        from a 5,000-word vocabulary, a Zipf-like mix of common and rare words), in one
        transaction through the triggers that keep the indexes, as the pipeline writes them.
        The fill is set-up and is timed apart.
Output: on stdout, the fill rate, then for each kind of query the median and p95 latency of
        the real `mailgate.store.search.search_tickets` (one page of 50 and the total, as the
        API and the panel ask for) and, as the baseline in the same run, of the same question
        asked without the index (`LIKE '%word%'` over subjects, texts and customers), with the
        ratio of the two medians. Exit status 0 when every search found what the baseline
        found; 1 otherwise.
Trust:  developer tool for a trusted local machine; everything it reads it generated itself,
        in a temporary directory removed at the end (or --keep DIR).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailgate.store import search
from mailgate.store.db import open_db, transaction

SYLLABLES = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "de", "ba", "po", "ze", "gu", "fa"]


def vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def text_of(rng: random.Random, vocab: list[str], n: int) -> str:
    # Zipf-like: low indexes (common words) far more often than high ones (rare words)
    return " ".join(vocab[min(int(rng.paretovariate(1.1)) - 1, len(vocab) - 1)]
                    for _ in range(n))


def fill(path: Path, tickets: int, rng: random.Random, vocab: list[str]) -> float:
    db = open_db(path)
    start = time.perf_counter()
    with transaction(db) as conn:
        now = "2026-01-01T00:00:00Z"
        for i in range(1, tickets + 1):
            conn.execute("INSERT INTO customers (id, email, name, created_at) VALUES (?, ?, ?, ?)",
                         (i, f"person{i}@company{i % 997}.test", f"Person {i}", now))
            subject = text_of(rng, vocab, 5)
            updated = f"2026-{1 + i % 12:02}-{1 + i % 28:02}T00:00:{i % 60:02}Z"
            conn.execute(
                "INSERT INTO tickets (id, subject, requester_id, status, created_at, updated_at)"
                " VALUES (?, ?, ?, 'open', ?, ?)", (i, subject, i, now, updated))
            for k in range(2):
                conn.execute(
                    "INSERT INTO messages (ticket_id, direction, subject, text, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (i, "in" if k == 0 else "out", subject, text_of(rng, vocab, 30), now))
    elapsed = time.perf_counter() - start
    db.conn.close()
    return elapsed


def baseline(db: Any, word: str) -> tuple[int, list[int]]:
    """The same question without the index: a LIKE scan for the whole word (the texts here
    are words between single spaces) in subjects and texts, and in customers' addresses."""
    pattern = f"% {word} %"
    where = ("(' ' || t.subject || ' ' LIKE ? OR t.id IN (SELECT ticket_id FROM messages WHERE"
             " ' ' || subject || ' ' LIKE ? OR ' ' || text || ' ' LIKE ?) OR t.requester_id IN"
             " (SELECT id FROM customers WHERE email LIKE ?))")
    params = [pattern, pattern, pattern, f"{word}@%"]
    total = db.execute(f"SELECT COUNT(*) FROM tickets t WHERE {where}", params).fetchone()[0]
    rows = db.execute(f"SELECT t.id FROM tickets t WHERE {where}"
                      " ORDER BY t.updated_at DESC, t.id DESC LIMIT 50", params).fetchall()
    return total, [r[0] for r in rows]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickets", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    vocab = vocabulary(rng, 5000)
    tmp = Path(tempfile.mkdtemp(prefix="search-bench-")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        path = tmp / "mailgate.db"
        took = fill(path, args.tickets, rng, vocab)
        print(f"fill: {args.tickets} tickets, {2 * args.tickets} messages in {took:.1f} s"
              f" ({args.tickets / took:.0f} tickets/s, indexes kept by their triggers)")
        db = open_db(path)
        kinds = {
            "rare word": lambda: vocab[rng.randint(2000, 4999)],
            "common word": lambda: vocab[rng.randint(0, 20)],
            "two words": lambda: f"{vocab[rng.randint(0, 200)]} {vocab[rng.randint(0, 200)]}",
            "customer address": lambda: f"person{rng.randint(1, args.tickets)}",
        }
        ok = True
        print(f"{'query':<18} {'search median':>14} {'p95':>9} {'LIKE median':>12} {'ratio':>7}"
              "   (one page of 50 and the total)")
        for kind, make in kinds.items():
            ours, theirs = [], []
            for _ in range(args.queries if kind != "two words" else args.queries // 2):
                q = make()
                t1, page = timed(lambda q=q: search.search_tickets(
                    db, search.TicketFilter(q=q), limit=50))
                ours.append(t1)
                if len(theirs) < 10:  # the scan is slow: ten of them give its median
                    t2, (total, ids) = timed(lambda q=q: baseline(db, q.split()[0]))
                    theirs.append(t2)
                    if kind != "two words" and (
                            page.total != total or [r["id"] for r in page.rows] != ids):
                        ok = False
                        print(f"  MISMATCH for {q!r}: search {page.total}, LIKE {total}")
            median, p95 = statistics.median(ours), statistics.quantiles(ours, n=20)[-1]
            base = statistics.median(theirs)
            print(f"{kind:<18} {median * 1000:>11.2f} ms {p95 * 1000:>6.2f} ms"
                  f" {base * 1000:>9.1f} ms {base / median:>6.0f}x")
        db.conn.close()
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
