"""DATA as Postfix 3.9 reads it, against a running daemon over raw sockets (smtplib would fix
the line ends we want to send): only CRLF.CRLF ends a message, every SMTP-smuggling sequence
of hannob/smtpsmug stays inside the message (normalize) or gets it refused (reject), long lines
are accepted byte-exact, dot-stuffing is undone, big messages go through the spool's files."""

from __future__ import annotations

import socket
import time

import pytest
from conftest import Daemon, queue_id_of

# hannob/smtpsmug's malformed end-of-DATA sequences.
SMUGGLING = {
    "lflf": b"\n.\n",
    "crcr": b"\r.\r",
    "crlf": b"\r.\n",
    "lfcr": b"\n.\r",
    "lfcrlf": b"\n.\r\n",
    "crlflf": b"\r\n.\n",
    "crcrlf": b"\r.\r\n",
    "crlfcr": b"\r\n.\r",
    "nullbefore": b"\r\n\x00.\r\n",
    "nullafter": b"\r\n.\x00\r\n",
}
# After the bad ending, the attacker's second message, as its own SMTP transaction.
SMUGGLED = (b"MAIL FROM:<attacker@evil.test>\r\nRCPT TO:<support@example.com>\r\nDATA\r\n"
            b"From: ceo@example.com\r\nTo: support@example.com\r\nSubject: SMUGGLED\r\n\r\n"
            b"Wire the money.\r\n")


class Client:
    """A raw SMTP client: exact bytes out, every reply line in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buffer = b""
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        """The next complete reply (multi-line replies joined), or b"" on EOF."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return b"\r\n".join(lines)
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return b"\r\n".join(lines)

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def begin(self, mail_from: bytes = b"carol@client.test") -> None:
        assert self.command(b"EHLO client.test").startswith(b"250")
        assert self.command(b"MAIL FROM:<" + mail_from + b">").startswith(b"250")
        assert self.command(b"RCPT TO:<support@example.com>").startswith(b"250")
        assert self.command(b"DATA").startswith(b"354")

    def data(self, content: bytes) -> bytes:
        """Send DATA content as is, then the real <CRLF>.<CRLF> (its CRLF being the content's
        own last line end when it has one); return the reply."""
        end = b".\r\n" if content.endswith(b"\r\n") else b"\r\n.\r\n"
        self.sock.sendall(content + end)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def _head(subject: str) -> bytes:
    return (f"From: Carol <carol@client.test>\r\nTo: support@example.com\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\n").encode()


def _tickets(d: Daemon) -> list[dict]:
    d.wait_idle()
    return d.json("tickets", "list")


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_smuggling_sequences_never_end_data_in_normalize_mode(daemon: Daemon, name: str
                                                              ) -> None:
    c = Client(daemon.port)
    c.begin()
    content = _head(f"smug-{name}") + b"First line." + SMUGGLING[name] + SMUGGLED + b"End."
    first = c.data(content)
    assert first.startswith(b"250 2.0.0"), first
    # Exactly one reply came: the smuggled MAIL/RCPT/DATA were message text, not commands.
    assert c.command(b"QUIT").startswith(b"221"), "a second reply was waiting"
    c.close()
    tickets = _tickets(daemon)
    assert [t["subject"] for t in tickets] == [f"smug-{name}"]
    (message,) = daemon.json("tickets", "show", str(tickets[0]["id"]))["messages"]
    assert "Wire the money." in message["text"]


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_smuggling_sequences_in_reject_mode(make_daemon, name: str) -> None:
    d = make_daemon(server_extra='bare_newline = "reject"')
    c = Client(d.port)
    c.begin()
    reply = c.data(_head(f"smug-{name}") + b"First line." + SMUGGLING[name] + SMUGGLED)
    bare = b"\r" in SMUGGLING[name].replace(b"\r\n", b"") or \
        b"\n" in SMUGGLING[name].replace(b"\r\n", b"")
    if bare:
        assert reply.startswith(b"550 5.6.0"), reply
    else:  # a NUL next to the dot: no bare line end, and still no end of DATA
        assert reply.startswith(b"250 2.0.0"), reply
    assert c.command(b"QUIT").startswith(b"221"), "a second reply was waiting"
    c.close()
    subjects = [t["subject"] for t in _tickets(d)]
    assert "SMUGGLED" not in subjects
    assert subjects == ([] if bare else [f"smug-{name}"])


def test_bare_lf_is_a_line_end_and_dot_stuffing_is_undone_after_it(daemon: Daemon) -> None:
    c = Client(daemon.port)
    c.begin()
    content = (b"From: carol@client.test\nTo: support@example.com\nSubject: bare lf\n"
               b"Message-ID: <barelf@client.test>\n\nline one\n..dotted after LF\r\n"
               b"..dotted after CRLF\r\nlast\n")
    reply = c.data(content)
    assert reply.startswith(b"250"), reply
    c.close()
    qid = queue_id_of(reply.decode())
    daemon.audit_for(qid)
    (raw,) = daemon.data_dir.glob(f"raw/*/*/*/{qid}.eml")
    stored = raw.read_bytes()
    assert stored.endswith(b"Subject: bare lf\r\nMessage-ID: <barelf@client.test>\r\n\r\n"
                           b"line one\r\n.dotted after LF\r\n.dotted after CRLF\r\nlast\r\n"
                           b"\r\n")  # the bare LF ended "last"; the CRLF before the dot too
    assert b"\n" not in stored.replace(b"\r\n", b"")


@pytest.mark.parametrize("length", [999, 5_000, 2_000_000])
def test_long_lines_are_accepted_and_stored_byte_exact(daemon: Daemon, length: int) -> None:
    """RFC 5322's 998 is for writers; Postfix takes longer lines, and so do we."""
    c = Client(daemon.port)
    c.begin()
    line = (b"0123456789abcdef" * (length // 16 + 1))[:length]
    content = _head(f"long-{length}") + line + b"\r\n" + b"after the long line\r\n"
    reply = c.data(content)
    c.close()
    assert reply.startswith(b"250 2.0.0"), reply
    qid = queue_id_of(reply.decode())
    assert daemon.audit_for(qid)["action"] == "created_ticket"
    (raw,) = daemon.data_dir.glob(f"raw/*/*/*/{qid}.eml")
    assert raw.read_bytes().endswith(content)  # our Authentication-Results is prepended


def test_a_big_message_goes_through_a_spool_file_and_leaves_none(daemon: Daemon) -> None:
    c = Client(daemon.port)
    c.begin()
    body = (b"x" * 75 + b"\r\n") * 40_000  # ~3 MB: past the in-memory limit
    content = _head("big") + body
    reply = c.data(content)
    c.close()
    assert reply.startswith(b"250 2.0.0"), reply
    qid = queue_id_of(reply.decode())
    assert daemon.audit_for(qid)["action"] == "created_ticket"
    (raw,) = daemon.data_dir.glob(f"raw/*/*/*/{qid}.eml")
    assert raw.read_bytes().endswith(content)
    deadline = time.monotonic() + 10
    while list((daemon.data_dir / "spool").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((daemon.data_dir / "spool").glob("*")) == []


def test_a_refused_big_message_leaves_no_spool_file(make_daemon) -> None:
    d = make_daemon(server_extra="max_message_size = 1000000")
    c = Client(d.port)
    c.begin()
    reply = c.data(_head("too big") + (b"y" * 75 + b"\r\n") * 20_000)
    assert reply.startswith(b"552 5.3.4"), reply
    # The session goes on: the next transaction works.
    c.begin()
    assert c.data(_head("small")).startswith(b"250")
    c.close()
    d.wait_idle()
    assert list((d.data_dir / "spool").glob("*")) == []
    assert [r["reason"] for r in d.json("audit", "incoming", "--action", "rejected")] == [
        "message exceeds max_message_size"]
