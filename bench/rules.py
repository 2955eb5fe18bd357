"""Rules benchmark: 200 automation rules evaluated per second, against the pipeline's rate.

Usage: python bench/rules.py [--rules 200] [--messages 400]

Input: command-line options only; messages are the customer mail of ../shared/corpus (read
only). Output: on stdout, the pipeline's rate (messages per second through the real Pipeline:
spool, parse, classify, thread, store, in a temporary directory, without rules), the rate of
rule evaluations and of whole rule sets (200 rules for one event), and how much of a message's
time the rules take. Trust: a developer tool on a trusted machine; writes only to a temporary
directory, which it removes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from mailgate.model import Envelope, new_queue_id
from mailgate.pipeline.process import Pipeline
from mailgate.rules import Facts, evaluate, load_rules
from mailgate.spool import Spool, SpoolWriter
from mailgate.store.db import open_db

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
AGENTS = frozenset({"bob@example.com", "carol@example.com"})


def make_rules(n: int) -> list[dict[str, object]]:
    """A realistic mix: substring, domain, status/priority/tag and regex conditions."""
    shapes: list[dict[str, object]] = [
        {"subject_contains": ["urgent", "asap"]},
        {"from_domain": "acme.com", "priority": "normal"},
        {"body_contains": "invoice", "unassigned": True},
        {"matches": r"order\s+#?\d{4,}"},
        {"status": ["open", "pending_agent"], "tag": "vip"},
        {"from": "*@globex.test"},
    ]
    rules = []
    for i in range(n):
        rules.append({
            "name": f"rule {i}", "when": "ticket_created", "if": shapes[i % len(shapes)],
            "then": {"add_tags": [f"t{i}"], "priority": "high"},
        })
    return rules


def facts_for_corpus() -> list[Facts]:
    from mailgate.parsing.parse import parse

    out = []
    labels = (CORPUS / "labels.tsv").read_text().splitlines()[1:]
    for line in labels:
        path, label = line.split("\t")
        if label != "customer":
            continue
        p = parse((CORPUS / path).read_bytes())
        out.append(Facts(now=datetime.now(UTC), subject=p.subject, body=p.text[:5000],
                         from_addr=p.from_.email, status="open", priority="normal"))
    return out


def pipeline_rate(messages: int) -> float:
    """Messages per second through the real pipeline (no rules), one message at a time."""
    raws = []
    for line in (CORPUS / "labels.tsv").read_text().splitlines()[1:]:
        path, label = line.split("\t")
        if label == "customer":
            raw = (CORPUS / path).read_bytes()
            raws.append(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        writer = SpoolWriter(data / "spool.db")
        spool = Spool(data / "spool.db")
        pipe = Pipeline(open_db(data / "mailgate.db"), spool, data)
        for i in range(messages):
            # hide the Message-ID so repeated corpus mail is not stored as a duplicate
            raw = raws[i % len(raws)].replace(b"Message-ID:", f"X-Seq: {i}\r\nX-Old-Id:".encode(),
                                              1)
            env = Envelope(new_queue_id(), time.time(), "127.0.0.1", "bench", "a@b.test",
                           ("support@example.com",), len(raw))
            writer.submit(env, raw).result()
        start = time.perf_counter()
        done = 0
        while done < messages:
            batch = pipe.run_once(1)
            if not batch:
                break
            done += len(batch)
        elapsed = time.perf_counter() - start
        writer.close()
        spool.close()
    return done / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=200)
    ap.add_argument("--messages", type=int, default=400)
    args = ap.parse_args()
    rules = load_rules(make_rules(args.rules), "bench", None, agents=AGENTS,
                       template_kinds=frozenset())
    facts = facts_for_corpus()
    msg_rate = pipeline_rate(args.messages)
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        hits = 0
        for f in facts:
            hits += sum(ev.hit for ev in evaluate(rules, "ticket_created", f, None))
        rounds.append(time.perf_counter() - start)
    per_set = statistics.median(rounds) / len(facts)
    print(f"pipeline (no rules): {msg_rate:8.1f} messages/s")
    print(f"rules: {args.rules * len(facts) / statistics.median(rounds):10.0f} rule evaluations/s"
          f" ({1 / per_set:.0f} sets of {args.rules} rules/s, {hits} hits in the last round)")
    share = per_set * msg_rate
    print(f"one event's {args.rules} rules cost {per_set * 1e3:.3f} ms = {share:.1%} of a"
          f" message's pipeline time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
