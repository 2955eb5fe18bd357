"""Webhooks: events written in the transaction of the change, POSTed signed to a real aiohttp
receiver on loopback by a running daemon, retried, audited, and refused where the SSRF guard
says no.

Real parts: the daemon (`make_daemon`) takes mail over SMTP; the receiver is an aiohttp web
server in a thread of this test; the CLI reads the audit. Backoff is made short through the
config (`retry_base_seconds`), never by patching.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import ROOT, Daemon, free_port, queue_id_of, send

from mailgate.config import parse_config
from mailgate.errors import ConfigError
from mailgate.outbound.webhook_guard import Checked, PinnedResolver, why_not_public

SECRET = "s3cret-for-the-receiver-0123"


class Receiver:
    """An aiohttp server on 127.0.0.1 that records each POST and answers with the next of
    `answers` (then `default`); `delay` seconds before answering."""

    def __init__(self, answers: tuple[int, ...] = (), default: int = 200) -> None:
        self.answers = list(answers)
        self.default = default
        self.delay = 0.0
        self.got: list[tuple[dict[str, str], bytes, int]] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.answers.pop(0) if self.answers else self.default
        self.got.append((dict(request.headers), body, status))
        return web.Response(status=status, text="ok" if status < 300 else "receiver is down")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """The POSTs answered 2xx: (headers, decoded body)."""
        return [(h, json.loads(b)) for h, b, status in self.got if 200 <= status < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def webhook(url: str, events: tuple[str, ...], *, allow_private: bool = True,
            **settings: float) -> str:
    """A `[[webhooks]]` entry named crm; backoff short unless `settings` say otherwise."""
    values = {"retry_base_seconds": 0.3, "retry_max_seconds": 1, "timeout": 5, **settings}
    return (f'\n[[webhooks]]\nname = "crm"\nurl = "{url}"\nevents = {json.dumps(list(events))}\n'
            f'secret = "{SECRET}"\nallow_private = {"true" if allow_private else "false"}\n'
            + "".join(f"{k} = {v}\n" for k, v in values.items()))


def wait_for(what: Callable[[], Any], timeout: float = 30.0, why: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = what()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {why}")
        time.sleep(0.05)


def mail(subject: str = "Printer on fire", sender: str = "jane@customer.test") -> str:
    return (f"From: Jane <{sender}>\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@customer.test>\r\n\r\nIt is on fire.\r\n")


def readme_verify() -> Callable[[str, str, bytes, str], bool]:
    """The receiver's check exactly as the README prints it (its ```python block after the
    `webhook-verify` marker)."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- webhook-verify -->\s*```python\n(.*?)```", text, re.S)
    assert found, "the README's signature recipe is missing"
    namespace: dict[str, Any] = {}
    exec(found.group(1), namespace)  # our own README's snippet, as a receiver runs it
    return namespace["verify"]  # type: ignore[no-any-return]


def attempts(d: Daemon, *args: str) -> list[dict[str, Any]]:
    return list(d.json("audit", "webhooks", *args))


# --- delivery ---------------------------------------------------------------------------------


def test_events_are_signed_as_the_readme_says_and_carry_the_cli_fields(
        make_daemon: Callable[..., Daemon], receiver: Receiver) -> None:
    d = make_daemon(webhook(receiver.url, ("ticket_created", "message_received",
                                           "status_changed", "assigned")))
    qid = queue_id_of(send(d.port, mail())[1])
    ticket_id = d.audit_for(qid)["ticket_id"]
    got = wait_for(lambda: len(receiver.delivered()) >= 2 and receiver.delivered(),
                   why="ticket_created and message_received")
    verify = readme_verify()
    for headers, body in ((h, b) for h, b, _s in receiver.got):
        assert verify(SECRET, headers["X-Mailgate-Timestamp"], body,
                      headers["X-Mailgate-Signature"])
        assert not verify("another-secret-entirely", headers["X-Mailgate-Timestamp"], body,
                          headers["X-Mailgate-Signature"])
        assert not verify(SECRET, headers["X-Mailgate-Timestamp"], body + b" ",
                          headers["X-Mailgate-Signature"])  # a changed body fails
        assert headers["Content-Type"] == "application/json"
    events = {h["X-Mailgate-Event"]: (h, b) for h, b in got}
    created = events["ticket_created"][1]
    shown = d.json("tickets", "show", str(ticket_id))
    for key in ("id", "subject", "status", "requester", "assignee", "priority", "tags",
                "created_at", "participants", "mailbox"):
        assert created["ticket"][key] == shown[key], key
    assert created["event"] == "ticket_created" and created["queue_id"] == qid
    message = events["message_received"][1]["message"]
    assert message["from"] == "jane@customer.test" and "on fire" in message["text"]
    assert message["id"] == shown["messages"][0]["id"]

    d.cli("tickets", "assign", str(ticket_id), "alice@example.com")
    d.cli("tickets", "status", str(ticket_id), "resolved")
    later = wait_for(lambda: len(receiver.delivered()) >= 4 and receiver.delivered()[2:],
                     why="assigned and status_changed")
    bodies = {b["event"]: b for _h, b in later}
    assert bodies["assigned"]["change"] == {"assignee": "alice@example.com", "previous": None,
                                            "by": "cli"}
    assert bodies["status_changed"]["change"] == {"status": "resolved", "previous": "open",
                                                  "by": "cli"}
    assert bodies["status_changed"]["ticket"]["status"] == "resolved"
    ids = [h["X-Mailgate-Delivery"] for h, _b, _s in receiver.got]
    assert len(set(ids)) == len(ids) == 4


@pytest.mark.both_engines
def test_a_receiver_that_fails_twice_gets_the_event_once_after_it_recovers(
        make_daemon: Callable[..., Daemon], receiver: Receiver) -> None:
    receiver.answers = [500, 500]
    d = make_daemon(webhook(receiver.url, ("ticket_created",)))
    ticket_id = d.audit_for(queue_id_of(send(d.port, mail())[1]))["ticket_id"]
    wait_for(receiver.delivered, why="the third attempt")
    time.sleep(1.5)  # longer than any retry would wait: nothing more comes
    assert [s for _h, _b, s in receiver.got] == [500, 500, 200]
    assert len(receiver.delivered()) == 1
    assert len({h["X-Mailgate-Delivery"] for h, _b, _s in receiver.got}) == 1  # one delivery
    rows = attempts(d, "--ticket", str(ticket_id))
    assert [(r["attempt"], r["outcome"], r["status_code"]) for r in reversed(rows)] == [
        (1, "retry", 500), (2, "retry", 500), (3, "delivered", 200)]
    assert "receiver is down" in rows[-1]["error"]
    assert rows[0]["state"] == "delivered" and rows[0]["address"] == "127.0.0.1"
    assert len(attempts(d, "--outcome", "retry")) == 2
    table = d.cli("audit", "webhooks", "--limit", "1")
    assert "delivered" in table and "2 more after these" in table


def test_a_daemon_stopped_mid_retry_delivers_after_it_starts_again(
        make_daemon: Callable[..., Daemon], receiver: Receiver) -> None:
    receiver.default = 503
    d = make_daemon(webhook(receiver.url, ("ticket_created",),
                            retry_base_seconds=3))
    ticket_id = d.audit_for(queue_id_of(send(d.port, mail())[1]))["ticket_id"]
    wait_for(lambda: attempts(d), why="the first attempt")
    assert d.stop() == 0  # the retry is due in about 3 s: the daemon is gone by then
    receiver.default = 200
    d.start()
    wait_for(receiver.delivered, why="the retry after the restart")
    rows = wait_for(lambda: [r for r in attempts(d, "--ticket", str(ticket_id))
                             if r["outcome"] == "delivered"] and attempts(d))
    assert [r["outcome"] for r in reversed(rows)] == ["retry", "delivered"]
    assert receiver.delivered()[0][1]["ticket"]["id"] == ticket_id


def test_a_post_cut_short_by_a_stop_is_sent_again_after_the_restart(
        make_daemon: Callable[..., Daemon], receiver: Receiver) -> None:
    receiver.delay = 12.0  # the receiver holds the first POST past the daemon's stop
    d = make_daemon(webhook(receiver.url, ("ticket_created",), timeout=60))
    send(d.port, mail())
    time.sleep(1.5)  # the POST is in flight (the receiver holds it)
    assert attempts(d) == []
    d.stop()
    receiver.delay = 0.0
    d.start()
    wait_for(receiver.delivered, why="the delivery after the restart")
    rows = attempts(d)
    assert rows[-1]["outcome"] == "retry" and "restart" in rows[-1]["error"]
    assert rows[0]["outcome"] == "delivered"
    ids = {h["X-Mailgate-Delivery"] for h, _b, s in receiver.got if s == 200}
    assert len(ids) == 1


def test_a_4xx_answer_fails_at_once_and_a_redirect_is_not_followed(
        make_daemon: Callable[..., Daemon], receiver: Receiver) -> None:
    receiver.answers = [404, 302]
    d = make_daemon(webhook(receiver.url, ("ticket_created", "message_received")))
    send(d.port, mail())
    rows = wait_for(lambda: len(attempts(d)) >= 2 and attempts(d), why="two attempts")
    time.sleep(1.0)
    assert len(receiver.got) == 2  # neither retried
    assert sorted(r["outcome"] for r in attempts(d)) == ["failed", "failed"]
    errors = " | ".join(r["error"] for r in rows)
    assert "not retried" in errors and "redirects are not followed" in errors


def test_given_up_outgoing_mail_is_an_event_and_unsubscribed_events_write_nothing(
        make_daemon: Callable[..., Daemon], receiver: Receiver) -> None:
    relay = ('\n[relay]\nhost = "127.0.0.1"\nport = 1\nretry_base_seconds = 5\n'
             "give_up_after_seconds = 1\n")
    d = make_daemon(relay + webhook(receiver.url, ("outbound_failed",)))
    ticket_id = d.audit_for(queue_id_of(send(d.port, mail())[1]))["ticket_id"]
    _h, body = wait_for(receiver.delivered, why="outbound_failed")[0]
    assert body["event"] == "outbound_failed" and body["ticket"]["id"] == ticket_id
    assert body["outbound"]["kind"] == "new_ticket_ack"
    assert body["outbound"]["to"] == "jane@customer.test"
    assert "gave up" in body["outbound"]["error"]
    store = d.store()
    try:
        events = [r[0] for r in store.execute("SELECT event FROM webhook_deliveries")]
    finally:
        store.close()
    assert events == ["outbound_failed"]  # nothing for the events nobody subscribed to


# --- the SSRF guard ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_loopback_url_without_allow_private_is_refused_and_audited(
        make_daemon: Callable[..., Daemon], receiver: Receiver, host: str) -> None:
    url = receiver.url.replace("127.0.0.1", host)
    d = make_daemon(webhook(url, ("ticket_created",), allow_private=False))
    send(d.port, mail())
    rows = wait_for(lambda: attempts(d), why="the refused attempt")
    time.sleep(1.0)
    assert receiver.got == []  # no connection was made
    assert [r["outcome"] for r in attempts(d)] == ["failed"]
    assert "loopback address" in rows[0]["error"] and "allow_private" in rows[0]["error"]
    assert rows[0]["status_code"] is None and rows[0]["state"] == "failed"


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "224.0.0.1", "100.64.0.1", "240.0.0.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1", "64:ff9b::a9fe:a9fe"])
def test_the_guard_refuses_every_kind_of_non_public_address(address: str) -> None:
    assert why_not_public(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_the_guard_lets_public_addresses_through(address: str) -> None:
    assert why_not_public(ipaddress.ip_address(address)) is None


def test_the_connection_only_gets_the_addresses_that_were_checked() -> None:
    import socket

    resolver = PinnedResolver(Checked("hooks.example.net", ((socket.AF_INET, "93.184.216.34"),)))
    found = asyncio.run(resolver.resolve("hooks.example.net", 443))
    assert [r["host"] for r in found] == ["93.184.216.34"]
    with pytest.raises(OSError):  # any other name (a redirect, a rebinding) gets nothing
        asyncio.run(resolver.resolve("internal.example.net", 443))


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "key", "words"), [
    ('url = "ftp://x.example/h"\nevents = ["assigned"]\nsecret = "0123456789abcdef"',
     "url", "http:// or https://"),
    ('url = "https://x.example/h"\nevents = ["ticket_deleted"]\nsecret = "0123456789abcdef"',
     "events", "unknown event 'ticket_deleted'"),
    ('url = "https://x.example/h"\nevents = []\nsecret = "0123456789abcdef"',
     "events", "name the events"),
    ('url = "https://x.example/h"\nevents = ["assigned"]', "secret", "at least 16"),
    ('url = "https://x.example/h"\nevents = ["assigned"]\nsecret = "0123456789abcdef"\n'
     'colour = "red"', "colour", "unknown key"),
    ('url = "https://x.example/h"\nevents = ["assigned"]\nsecret = "0123456789abcdef"\n'
     "timeout = 0", "timeout", "more than 0"),
    ('url = "https://x.example/h"\nevents = ["assigned"]\nsecret = "0123456789abcdef"\n'
     'allow_private = "yes"', "allow_private", "true or false"),
    ('url = "https://x.example/h"\nevents = ["assigned"]\nsecret_file = "missing.txt"',
     "secret_file", "cannot read"),
    ('events = ["assigned"]\nsecret = "0123456789abcdef"', "url", "needs the url"),
])
def test_config_errors_name_the_file_and_the_key(tmp_path: Path, body: str, key: str,
                                                 words: str) -> None:
    import tomllib

    path = tmp_path / "mailgate.toml"
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(f"[[webhooks]]\n{body}\n"), path)
    message = str(err.value)
    assert message.startswith(f"{path}: [[webhooks]] #1 {key}: "), message
    assert words in message and "\n" not in message


def test_a_secret_file_is_read_and_never_shown(tmp_path: Path) -> None:
    import tomllib

    (tmp_path / "hook.secret").write_text(SECRET + "\n")
    config = parse_config(tomllib.loads(
        '[[webhooks]]\nurl = "https://x.example/h"\nevents = ["assigned"]\n'
        'secret_file = "hook.secret"\n'), tmp_path / "mailgate.toml")
    assert config.webhooks[0].secret == SECRET
    assert SECRET not in repr(config)
