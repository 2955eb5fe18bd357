"""What an SMTP client gets from a running mailgate, refusal by refusal."""

from __future__ import annotations

import asyncio
import datetime
import smtplib
import ssl
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from conftest import Daemon, free_port, queue_id_of, send

from mailgate.spool import MessageBody

SIMPLE = (
    "From: Carol <carol@client.test>\r\nTo: support@example.com\r\n"
    "Subject: {subject}\r\nMessage-ID: <{mid}@client.test>\r\n\r\nHello there.\r\n"
)


def test_unknown_mailbox_and_foreign_domain_are_refused(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as s:
        s.ehlo("client.test")
        s.mail("carol@client.test")
        code, msg = s.rcpt("nobody@example.com")
        assert (code, msg.split()[0]) == (550, b"5.1.1")
        code, msg = s.rcpt("victim@elsewhere.test")
        assert (code, msg.split()[0]) == (550, b"5.7.1")
        code, msg = s.rcpt("support@Example.COM")
        assert code == 250
        code, msg = s.rcpt("support+anything-here@example.com")
        assert code == 250


def test_too_many_recipients(make_daemon) -> None:
    d = make_daemon(server_extra="max_recipients = 2")
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.ehlo("client.test")
        s.mail("carol@client.test")
        assert s.rcpt("support@example.com")[0] == 250
        assert s.rcpt("sales@example.com")[0] == 250
        code, msg = s.rcpt("support+x@example.com")
        assert (code, msg.split()[0]) == (452, b"4.5.3")


def test_size_limits_in_mail_and_data(make_daemon) -> None:
    d = make_daemon(server_extra="max_message_size = 10000")
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.ehlo("client.test")
        assert b"SIZE 10000" in s.ehlo_resp
        code, msg = s.mail("carol@client.test", ["SIZE=20000"])
        assert (code, msg.split()[0]) == (552, b"5.3.4")
        s.rset()
        s.mail("carol@client.test")
        s.rcpt("support@example.com")
        body = SIMPLE.format(subject="big", mid="big1") + ("x" * 70 + "\r\n") * 300
        code, msg = s.data(body.encode())
        assert (code, msg.split()[0]) == (552, b"5.3.4")
    d.wait_idle()
    rows = d.json("audit", "incoming", "--action", "rejected")
    assert sorted(r["reason"] for r in rows) == [
        "declared SIZE=20000 exceeds max_message_size (10000)",  # refused at MAIL FROM
        "message exceeds max_message_size",  # refused after DATA
    ]
    assert {r["mail_from"] for r in rows} == {"carol@client.test"}
    assert d.json("tickets", "list") == []


@pytest.mark.parametrize("bad", [
    b"Subject: x\r\n\r\nbare\nLF\r\n",
    b"Subject: x\r\n\r\nbare\rCR\r\n",
    b"Subject: x\r\n\r\nsmuggle\n.\nMAIL FROM:<a@b>\r\n",
])
def test_bare_line_endings_are_refused_and_nothing_stored(make_daemon, bad: bytes) -> None:
    daemon = make_daemon(server_extra='bare_newline = "reject"')
    code, msg = send(daemon.port, bad)
    assert code == 550 and msg.startswith("5.6.0"), msg
    daemon.wait_idle()
    assert daemon.json("tickets", "list") == []
    rows = daemon.json("audit", "incoming")
    assert len(rows) == 1
    assert rows[0]["action"] == "rejected"
    assert rows[0]["reason"] == "bare CR or LF in DATA"
    assert not list(daemon.data_dir.rglob("*.eml"))


def test_free_space_floor(make_daemon) -> None:
    d = make_daemon(server_extra="min_free_bytes = 1000000000000000")  # ~1 PB: always below
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.ehlo("client.test")
        code, msg = s.mail("carol@client.test")
        assert (code, msg.split()[0]) == (452, b"4.3.1")


def test_queued_reply_and_unknown_command_have_enhanced_codes(daemon: Daemon) -> None:
    code, msg = send(daemon.port, SIMPLE.format(subject="hi", mid="q1"))
    assert code == 250 and msg.startswith("2.0.0 Ok: queued as "), msg
    with smtplib.SMTP("127.0.0.1", daemon.port) as s:
        code, msg = s.docmd("FOO")
        assert code == 500 and msg.startswith(b"5.5.2"), msg
        code, msg = s.docmd("DATA")
        assert code == 503 and msg.startswith(b"5.5."), msg


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


def test_starttls_offered_with_a_certificate(make_daemon, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    d = make_daemon(server_extra=f'tls_cert = "{cert}"\ntls_key = "{key}"')
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        s.starttls(context=ctx)
        s.ehlo("client.test")
        s.mail("carol@client.test")
        s.rcpt("support@example.com")
        code, msg = s.data(SIMPLE.format(subject="over tls", mid="tls1").encode())
        assert code == 250
    row = d.audit_for(queue_id_of(msg))
    assert row["action"] == "created_ticket"


def test_no_starttls_without_certificate(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as s:
        s.ehlo("client.test")
        assert not s.has_extn("starttls")


class _BrokenSpool:
    """A spool writer whose disk has failed: every submit raises."""

    def new_body(self, queue_id: str) -> MessageBody:
        return MessageBody(Path("/nonexistent"), queue_id)

    def submit(self, envelope, content, kind="message", reason=None) -> Future[None]:
        fut: Future[None] = Future()
        fut.set_exception(OSError(5, "Input/output error"))
        return fut


def test_unexpected_failure_answers_451_not_500(tmp_path: Path) -> None:
    """The real handler and server with a failing spool: the client gets 451 4.3.0."""
    from conftest import write_config

    from mailgate.config import load_config
    from mailgate.smtp.handler import MailgateHandler
    from mailgate.smtp.recipients import RecipientPolicy
    from mailgate.smtp.server import start_server

    port = free_port()
    cfg = load_config(write_config(tmp_path, port))
    handler = MailgateHandler(
        RecipientPolicy(frozenset(cfg.domains), frozenset(cfg.mailboxes)), _BrokenSpool(),
        max_recipients=5, data_dir=tmp_path, min_free_bytes=0,
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def run() -> None:
        holder["server"] = await start_server(cfg, handler)
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(run()), loop.run_forever()))
    thread.start()
    try:
        assert started.wait(10)
        code, msg = send(port, SIMPLE.format(subject="x", mid="broken1"))
        assert code == 451 and msg.startswith("4.3.0"), msg
        assert "Error" not in msg and "OSError" not in msg
    finally:
        loop.call_soon_threadsafe(holder["server"].close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_auth_is_neither_advertised_nor_accepted(make_daemon, tmp_path: Path) -> None:
    """Nobody can log in to mailgate, so AUTH is not offered, before or after STARTTLS."""
    cert, key = _self_signed(tmp_path)
    d = make_daemon(server_extra=f'tls_cert = "{cert}"\ntls_key = "{key}"')
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA==")
        assert (code, msg.split()[0]) == (502, b"5.5.1"), msg
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        s.starttls(context=ctx)
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        code, msg = s.docmd("AUTH", "LOGIN")
        assert (code, msg.split()[0]) == (502, b"5.5.1"), msg


@pytest.mark.parametrize("command", [
    b"MAIL FROM:<carol\rx@client.test>",
    b'MAIL FROM:<"carol@client.test>',
    b"MAIL FROM:<<carol@client.test>",
    b"RCPT TO:<support\r@example.com>",
    b'RCPT TO:<"support@example.com>',
])
def test_addresses_with_bare_cr_or_unbalanced_quotes_get_501(daemon: Daemon, command: bytes
                                                             ) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"EHLO client.test\r\n")
        while f.readline()[3:4] == b"-":
            pass
        if command.startswith(b"RCPT"):
            sock.sendall(b"MAIL FROM:<carol@client.test>\r\n")
            assert f.readline().startswith(b"250")
        sock.sendall(command + b"\r\n")
        reply = f.readline()
    assert reply.startswith(b"501 5.1."), reply


def test_address_harvesting_ends_the_session(daemon: Daemon) -> None:
    """More than unknown_recipient_limit (10) unknown mailboxes: 421 4.7.0 and the end."""
    with smtplib.SMTP("127.0.0.1", daemon.port) as s:
        s.ehlo("client.test")
        s.mail("probe@client.test")
        for i in range(10):
            code, msg = s.rcpt(f"guess{i}@example.com")
            assert (code, msg.split()[0]) == (550, b"5.1.1")
        code, msg = s.rcpt("guess10@example.com")
        assert (code, msg.split()[0]) == (421, b"4.7.0"), msg
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.rcpt("support@example.com")
    assert "Too many unknown recipients" in daemon.log()


def test_hard_error_limit_closes_the_session(make_daemon) -> None:
    d = make_daemon(server_extra="hard_error_limit = 3")
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.ehlo("client.test")
        assert s.docmd("FOO")[0] == 500
        assert s.docmd("BAR")[0] == 500
        code, msg = s.docmd("BAZ")
        assert (code, msg.split()[0]) == (421, b"4.7.0"), msg
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()
