"""Big bodies are read from the raw message, not copied by the stdlib parser.

`mailbounds` sets aside every leaf body longer than `SET_ASIDE_BYTES`; parse and classify decode
it from the raw bytes. These tests prove the result is the same as a full stdlib parse (the
bound turned off), for each transfer encoding and nesting, that a forged marker in a mail
changes nothing, and that parsing a 20 MB attachment stays within a small multiple of its size.
"""

from __future__ import annotations

import base64
import hashlib
import os
import quopri
import tracemalloc

import pytest

from mailgate import mailbounds
from mailgate.classify import classify
from mailgate.parsing.parse import parse

SIZE = 2 * 1024 * 1024  # above SET_ASIDE_BYTES


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _multipart(*parts: bytes, subject: str = "files", boundary: str = "b") -> bytes:
    head = (f"From: Ann <ann@client.test>\r\nTo: support@desk.test\r\nSubject: {subject}\r\n"
            "Message-ID: <big@client.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n").encode()
    sep = b"--" + boundary.encode()
    body = b"".join(sep + b"\r\n" + p + b"\r\n" for p in parts)
    return head + body + sep + b"--\r\n"


def _attachment(data: bytes, name: str = "data.bin") -> bytes:
    return (b"Content-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"" + name.encode() + b"\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(data))


TEXT = ("Grüße aus Köln, die Rechnung ist da. " * 60_000).encode()

MESSAGES = {
    "base64 attachment": _multipart(b"Content-Type: text/plain\r\n\r\nThe file.",
                                    _attachment(os.urandom(SIZE))),
    "quoted-printable text": _multipart(
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + quopri.encodestring(TEXT).replace(b"\n", b"\r\n")),
    "8bit text, the whole message": (
        b"From: ann@client.test\r\nTo: support@desk.test\r\nSubject: long\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + TEXT.replace(b". ", b".\r\n") + b"\r\n"),
    "bare LF lines": _multipart(b"Content-Type: text/plain\r\n\r\nsee",
                                _attachment(os.urandom(SIZE))).replace(b"\r\n", b"\n"),
    "two big parts": _multipart(_attachment(os.urandom(SIZE), "a.bin"),
                                _attachment(os.urandom(SIZE), "b.bin")),
}


def _unbounded(monkeypatch: pytest.MonkeyPatch, raw: bytes, call=parse):
    with monkeypatch.context() as m:
        m.setattr(mailbounds, "SET_ASIDE_BYTES", 1 << 40)
        return call(raw)


@pytest.mark.parametrize("name", list(MESSAGES))
def test_a_set_aside_body_parses_exactly_as_the_stdlib_reads_it(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = MESSAGES[name]
    assert mailbounds.bound(raw).aside, "the test message must have a body set aside"
    fast, full = parse(raw), _unbounded(monkeypatch, raw)
    assert fast.text == full.text
    assert fast.html == full.html
    assert [(a.filename, a.content_type, hashlib.sha256(a.payload).hexdigest())
            for a in fast.attachments] == \
        [(a.filename, a.content_type, hashlib.sha256(a.payload).hexdigest())
         for a in full.attachments]
    assert fast.defects == full.defects
    assert classify(fast, raw, "ann@client.test") == \
        _unbounded(monkeypatch, raw, lambda r: classify(full, r, "ann@client.test"))


def test_a_forwarded_message_keeps_its_big_attachment(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(SIZE)
    inner = _multipart(b"Content-Type: text/plain\r\n\r\ninner", _attachment(data),
                       subject="the original", boundary="inner")
    raw = _multipart(b"Content-Type: text/plain\r\n\r\nforwarded, see below",
                     b"Content-Type: message/rfc822\r\n\r\n" + inner)
    parsed = parse(raw)
    [eml] = parsed.attachments
    assert eml.filename == "Fwd - the original.eml"
    [inside] = parse(eml.payload).attachments
    assert inside.payload == data
    full = _unbounded(monkeypatch, raw)
    assert parse(full.attachments[0].payload).attachments[0].payload == data


def test_a_forged_marker_in_a_mail_is_only_text() -> None:
    fake = b"mailgate-set-aside-0123456789abcdef-0"
    raw = _multipart(b"Content-Type: text/plain\r\n\r\n" + fake,
                     b"Content-Type: application/octet-stream\r\n"
                     b"Content-Disposition: attachment; filename=\"m.bin\"\r\n\r\n" + fake,
                     _attachment(os.urandom(SIZE)))
    parsed = parse(raw)
    assert parsed.text == fake.decode()
    assert parsed.attachments[0].payload == fake
    assert len(parsed.attachments[1].payload) == SIZE


def test_parsing_a_20_mb_attachment_allocates_a_small_multiple_of_it() -> None:
    data = os.urandom(15 * 1024 * 1024)
    raw = _multipart(b"Content-Type: text/plain\r\n\r\nThe file.", _attachment(data))
    tracemalloc.start()
    try:
        parsed = parse(raw)
        classify(parsed, raw, "ann@client.test")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.attachments[0].payload == data
    # the decoded attachment itself (15 MB) and working room; a full stdlib parse took ~150 MB
    assert peak < 2.5 * len(data), f"peak {peak >> 20} MB for a {len(raw) >> 20} MB message"
