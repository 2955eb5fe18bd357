"""The webhook delivery worker: POSTs each queued event to its webhook, signed, and records
every attempt.

Input: `webhook_deliveries` rows (their JSON bodies were written by mailgate; the webhook's
settings come from the configuration) and the receivers' answers (untrusted: only the status
code and the first bytes of the body, as one printable line, reach the audit). Output: one
`webhook_attempts` row per attempt and the delivery's state (`store.webhooks.record`).

Each POST carries the body exactly as stored, with `X-Mailgate-Event`, `X-Mailgate-Delivery`
(the delivery id, the same on every retry: receivers drop a repeat by it), `X-Mailgate-Timestamp`
(unix seconds) and `X-Mailgate-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." +
body)>` (`signature`). A 2xx answer delivers it; a timeout, a connection error, 408, 429 or a 5xx
is retried after `retry_base_seconds` doubled per attempt (at most `retry_max_seconds`, +-20 %
jitter) until `give_up_after_seconds` after the event; any other answer (3xx: redirects are not
followed; 4xx) fails it at once, as does an address the SSRF guard refuses
(`outbound.webhook_guard`). Delivery is at least once, and not in order.

Runs in the daemon's event loop next to the relay; database work goes to a thread of its own, so
neither the pipeline nor the SMTP side ever waits on a receiver.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from mailgate import __version__
from mailgate.config import Webhook
from mailgate.errors import temporary_cause
from mailgate.outbound.queue_worker import QueueWorker
from mailgate.outbound.webhook_guard import PinnedResolver, Refused, Unresolved, check_host
from mailgate.store import webhooks as store

log = logging.getLogger("mailgate.webhooks")

CONCURRENCY = 8  # deliveries in flight at once
LEASE_MARGIN = 30.0  # seconds a claim outlives the POST's own timeout
RETRY_STATUSES = frozenset({408, 429})
ERROR_TEXT = 200  # characters of a receiver's answer kept in the audit


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Mailgate-Signature` value: `sha256=` and the hex HMAC-SHA256 of
    `timestamp + "." + body` under the webhook's secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def backoff(hook: Webhook, attempts: int) -> float:
    """The wait before the next attempt after `attempts` attempts: doubling, capped, with
    +-20 % jitter so that many deliveries failed together do not return together."""
    delay = min(hook.retry_max_seconds, hook.retry_base_seconds * 2 ** max(0, attempts - 1))
    return delay * random.uniform(0.8, 1.2)


def _line(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in " ".join(text.split()))[:ERROR_TEXT]


class _Outcome:
    """What one attempt came to, before it is written."""

    def __init__(self, outcome: str, error: str = "", status: int | None = None,
                 address: str | None = None) -> None:
        self.outcome, self.error, self.status, self.address = outcome, error, status, address


class WebhookWorker(QueueWorker):
    """Delivers due webhook events until `stop()`; see the module docstring."""

    def __init__(self, database: Path | str, webhooks: tuple[Webhook, ...], *,
                 node_id: str = "mailgate", idle_poll: float = 1.0,
                 concurrency: int = CONCURRENCY) -> None:
        self.webhooks = webhooks  # replaced on a reload
        self.node_id = node_id
        self.idle_poll = max(0.05, min(5.0, idle_poll))
        self.concurrency = max(1, concurrency)
        super().__init__(database, "webhook-db")
        self._down = False
        self.delivered = 0
        self.failed = 0
        self.retried = 0

    # --- the loop -----------------------------------------------------------------------------

    def _lease(self) -> float:
        longest = max((w.timeout for w in self.webhooks), default=10.0)
        return longest + LEASE_MARGIN

    async def run(self) -> None:
        self._started()
        released = False
        while not self._stopping:
            self._wake.clear()
            try:
                if not released:
                    for did in await self._in_db(store.release_own, self.node_id):
                        log.warning("webhook delivery %d: an attempt was cut short by a"
                                    " restart; retried now", did)
                    released = True
                if not self.webhooks:  # none configured: nothing to deliver, nothing read
                    await self._sleep(self.idle_poll)
                    continue
                batch = await self._in_db(store.claim_due, self.concurrency, self.node_id,
                                          self._lease())
                due = None if batch else await self._in_db(store.next_due_in)
                self._down = False
            except Exception as exc:
                self._failed_read(exc)
                await self._sleep(1.0)
                continue
            if batch:
                await asyncio.gather(*(self._attempt(d) for d in batch))
                continue
            await self._sleep(self.idle_poll if due is None else min(self.idle_poll, due))

    def _failed_read(self, exc: Exception) -> None:
        cause = temporary_cause(exc)
        if cause is None:
            log.exception("webhooks: cannot read the outbox; retrying in 1s")
        elif not self._down:
            log.warning("webhooks: cannot read the outbox (%s); retrying every second", cause)
        self._down = cause is not None

    # --- one delivery -------------------------------------------------------------------------

    def _hook(self, name: str) -> Webhook | None:
        return next((w for w in self.webhooks if w.name == name), None)

    async def _attempt(self, delivery: store.Delivery) -> None:
        hook = self._hook(delivery.webhook)
        started = time.monotonic()
        if hook is None:
            result = _Outcome("failed", f"no webhook named {delivery.webhook!r} is configured"
                                        " any more ([[webhooks]])")
        else:
            try:
                result = await self._post(hook, delivery)
            except Exception as exc:  # never let one delivery stop the worker
                log.exception("webhook delivery %d: unexpected error", delivery.id)
                result = _Outcome("retry", _line(f"{type(exc).__name__}: {exc}"))
        seconds = round(time.monotonic() - started, 3)
        retry_in = 0.0
        if result.outcome == "retry":
            assert hook is not None
            retry_in = backoff(hook, delivery.attempts)
            if time.time() + retry_in > delivery.created_ts + hook.give_up_after_seconds:
                result = _Outcome("failed", f"gave up after {delivery.attempts} attempts"
                                            f" (give_up_after_seconds = "
                                            f"{hook.give_up_after_seconds:g}): {result.error}",
                                  result.status, result.address)
        level = logging.INFO if result.outcome == "delivered" else logging.WARNING
        log.log(level, "webhook delivery %d (%s to %s, attempt %d): %s%s%s", delivery.id,
                delivery.event, delivery.webhook, delivery.attempts, result.outcome,
                f" HTTP {result.status}" if result.status else "",
                f": {result.error}" if result.error else "")
        if result.outcome == "delivered":
            self.delivered += 1
        elif result.outcome == "failed":
            self.failed += 1
        else:
            self.retried += 1
        await self._record(delivery, result, seconds, retry_in)

    async def _record(self, delivery: store.Delivery, result: _Outcome, seconds: float,
                      retry_in: float) -> None:
        wait = 0.5
        while True:
            try:
                held = await self._in_db(
                    store.record, delivery, self.node_id, outcome=result.outcome,
                    status_code=result.status, address=result.address, error=result.error,
                    seconds=seconds, retry_in=retry_in)
            except Exception as exc:
                if temporary_cause(exc) is None and not self._stopping:
                    log.exception("webhook delivery %d: cannot record the attempt; its claim"
                                  " runs out and it is tried again", delivery.id)
                    return
                if self._stopping:
                    return  # the claim is given back at the next start
                log.warning("webhook delivery %d: cannot record the attempt yet (%s)",
                            delivery.id, temporary_cause(exc))
                await asyncio.sleep(wait)
                wait = min(10.0, wait * 2)
                continue
            if not held:
                log.warning("webhook delivery %d: node %r's claim ran out and another node took"
                            " it; its attempt decides", delivery.id, self.node_id)
            return

    async def _post(self, hook: Webhook, delivery: store.Delivery) -> _Outcome:
        parts = urlsplit(hook.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            checked = await check_host(host, port, hook.allow_private)
        except Refused as exc:
            return _Outcome("failed", str(exc))
        except Unresolved as exc:
            return _Outcome("retry", _line(str(exc)))
        body = delivery.payload.encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"mailgate/{__version__} (webhook)",
            "X-Mailgate-Event": delivery.event,
            "X-Mailgate-Delivery": str(delivery.id),
            "X-Mailgate-Timestamp": timestamp,
            "X-Mailgate-Signature": signature(hook.secret, timestamp, body),
        }
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(checked), use_dns_cache=False,
                                         force_close=True)
        address = None
        try:
            async with aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=hook.timeout),
                    auto_decompress=False) as session, session.post(
                    hook.url, data=body, headers=headers, allow_redirects=False) as resp:
                address = _peer(resp) or checked.addresses[0][1]
                text = _line((await resp.content.read(ERROR_TEXT)).decode("utf-8", "replace"))
                status = resp.status
        except TimeoutError:
            return _Outcome("retry", f"no answer within {hook.timeout:g}s (timeout)",
                            address=address)
        except (aiohttp.ClientError, OSError) as exc:
            return _Outcome("retry", _line(f"cannot connect: {exc}"), address=address)
        if 200 <= status < 300:
            return _Outcome("delivered", "", status, address)
        answer = f"HTTP {status}" + (f": {text}" if text else "")
        if status >= 500 or status in RETRY_STATUSES:
            return _Outcome("retry", answer, status, address)
        if 300 <= status < 400:
            return _Outcome("failed", f"{answer} (redirects are not followed)", status, address)
        return _Outcome("failed", f"{answer} (refused by the receiver: not retried)", status,
                        address)


def _peer(resp: aiohttp.ClientResponse) -> str | None:
    """The address the answer came from (the one connected to)."""
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else None
