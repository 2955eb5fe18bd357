"""Prometheus metrics: the objects every layer observes into, and a collector that reads the
database's counts at scrape time.

Input: observations from the pipeline (time per message), the relay worker (time per delivery
attempt) and the SMTP server (sessions opened and closed, spam scans), all trusted numbers from
our own code; at scrape time, a `counts()` callable supplied by the caller (the admin endpoint) that
returns the audit, outbox and spool counts from the database. Output: metric families for
`prometheus_client`'s text exposition. Observability, like logging: any module may import this
one; it imports nothing from mailgate, so it never pulls a layer into another.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

T = TypeVar("T")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

PIPELINE_SECONDS = Histogram(
    "mailgate_pipeline_seconds",
    "Time to take one spooled message through the pipeline (parse to commit).",
    buckets=_LATENCY_BUCKETS,
)
RELAY_SECONDS = Histogram(
    "mailgate_relay_seconds",
    "Time of one delivery attempt to the relay (connect to the reply to DATA, or failure).",
    buckets=_LATENCY_BUCKETS,
)
SPAM_SCAN_SECONDS = Histogram(
    "mailgate_spam_scan_seconds",
    "Time of one rspamd scan after DATA (the request to its answer, or failure).",
    buckets=_LATENCY_BUCKETS,
)
SPAM_VERDICTS = Counter(
    "mailgate_spam_verdicts", "Spam scans by what the SMTP stage decided.",
    labelnames=["action"])
SMTP_SESSIONS = Gauge("mailgate_smtp_sessions_open", "SMTP sessions open now.")
SMTP_SESSIONS_TOTAL = Counter("mailgate_smtp_sessions", "SMTP sessions accepted.")


async def timed(histogram: Histogram, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` and observe how long it took (also when it raises)."""
    start = time.perf_counter()
    try:
        return await awaitable
    finally:
        histogram.observe(max(0.0, time.perf_counter() - start))


@dataclass(frozen=True)
class Counts:
    """What the database says at scrape time."""

    incoming_by_action: Mapping[str, int] = field(default_factory=dict)
    outgoing_by_status: Mapping[str, int] = field(default_factory=dict)
    spool_by_state: Mapping[str, int] = field(default_factory=dict)


class DatabaseCollector(Collector):
    """Mail received by audit action, outgoing mail by status and spool depth by state, read
    through `counts()` each time Prometheus scrapes (nothing cached, nothing to keep in step).
    A failing read yields only `mailgate_database_up 0`."""

    def __init__(self, counts: Callable[[], Counts]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mailgate_database_up",
                               "1 when the database could be read for this scrape.")
        try:
            counts = self.counts()
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        received = CounterMetricFamily(
            "mailgate_mail_received", "Mail that reached DATA, by what was done with it.",
            labels=["action"])
        for action, n in sorted(counts.incoming_by_action.items()):
            received.add_metric([action], n)
        yield received
        outgoing = GaugeMetricFamily(
            "mailgate_outgoing_mail", "Mail in the outbox, by delivery status.", labels=["status"])
        for status, n in sorted(counts.outgoing_by_status.items()):
            outgoing.add_metric([status], n)
        yield outgoing
        spool = GaugeMetricFamily(
            "mailgate_spool_depth", "Spool entries, by state.", labels=["state"])
        for state, n in sorted(counts.spool_by_state.items()):
            spool.add_metric([state], n)
        yield spool
