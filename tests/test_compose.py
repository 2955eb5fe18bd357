"""Composing outgoing mail with our MIME writer (issue 13): what a receiving mail client and a
DKIM verifier see. Every message is parsed back with the stdlib (`email.message_from_bytes`,
`policy.default`), as a client would; DKIM is checked by dkimpy against a real key served by a
stub DNS function. tests/fixtures/compose holds what the stdlib `EmailMessage` composer wrote
before this issue: the new writer must parse to the same header values, tree and bodies."""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import json
import re
import time
from collections.abc import Callable
from datetime import UTC
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailgate.config import Dkim
from mailgate.outbound.compose import BadAddress, Headers, compose, display_name
from mailgate.outbound.dkim_sign import keygen, sign
from mailgate.outbound.render import InlineImage

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compose"
CASES: dict[str, dict[str, Any]] = json.loads((FIXTURES / "cases.json").read_text())
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5f1c1b00000000049454e44ae426082"
) * 30
LOGO = InlineImage("logo@mailgate", "image/png", PNG, "logo.png")
CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
SIMPLE_HEADERS = ("Message-ID", "Subject", "In-Reply-To", "Auto-Submitted",
                  "X-Auto-Response-Suppress", "Thread-Index", "Thread-Topic",
                  "X-Mailgate-Ticket", "MIME-Version")
ADDRESS_HEADERS = ("From", "To", "Cc", "Reply-To")


def headers(**changes: Any) -> Headers:
    values: dict[str, Any] = dict(
        from_name="Example Support", from_addr="support@example.com", to_name="Jane Doe",
        to_addr="jane@customer.test", reply_to="support+t1.abc@example.com",
        message_id="t1.abc@example.com", ticket_id=1)
    values.update(changes)
    return Headers(**values)


def _keeps_space_between_encoded_words() -> bool:
    """CPython gh-128110: before its fix, the stdlib read the white space between two encoded
    words of a display name as a space, which RFC 2047 §6.2 says a reader ignores (the stdlib's
    own writer, and ours, split a long name into several encoded words that way)."""
    msg = email.message_from_bytes(b"To: =?utf-8?q?a?= =?utf-8?q?b?= <x@y.test>\r\n\r\n",
                                   policy=email.policy.default)
    return msg["To"].addresses[0].display_name == "a b"


GH_128110 = _keeps_space_between_encoded_words()
_ADDRESS_FIELD = re.compile(rb"^(?:From|To|Cc|Reply-To):[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", re.M)
_BETWEEN_ENCODED_WORDS = re.compile(rb"(?<=\?=)(?:\r\n)?[ \t]+(?==\?)")


def parse(raw: bytes) -> EmailMessage:
    """The message as a client reads it: the stdlib parser, with RFC 2047 §6.2 applied to the
    display names where this Python still has gh-128110 (the white space between adjacent
    encoded words removed before parsing; the names must then come out exactly)."""
    if GH_128110:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        head = _ADDRESS_FIELD.sub(lambda m: _BETWEEN_ENCODED_WORDS.sub(b"", m.group()), head)
        raw = head + sep + rest
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def mailboxes(msg: EmailMessage, name: str) -> list[tuple[str, str]]:
    header = msg[name]
    return [] if header is None else [(a.display_name, a.addr_spec) for a in header.addresses]


def body(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body((subtype,))
    assert part is not None, subtype
    return part.get_content().replace("\r\n", "\n")


def tree(msg: EmailMessage) -> list[str]:
    return [part.get_content_type() for part in msg.walk()]


def lines_of(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\r\n")
    return raw[:-2].split(b"\r\n")


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def case_arguments(case: dict[str, Any]) -> tuple[str, str, str, tuple[InlineImage, ...], Headers]:
    values = dict(case["headers"])
    values["references"] = tuple(values.get("references", ()))
    values["cc"] = tuple(tuple(pair) for pair in values.get("cc", ()))
    images = tuple(InlineImage(i["cid"], i["content_type"], base64.b64decode(i["data"]),
                               i["filename"]) for i in case["images"])
    return case["subject"], case["text"], case["html"], images, Headers(**values)


# --- the same message as the stdlib composer wrote ---------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_parses_to_what_the_stdlib_composer_wrote(name: str) -> None:
    before = parse((FIXTURES / f"{name}.eml").read_bytes())
    after = parse(compose(*case_arguments(CASES[name])))
    assert [k for k in after if k != "Content-Type"] == [
        k for k in before if k != "Content-Type"]
    for header in SIMPLE_HEADERS:
        assert str(after[header] or "") == str(before[header] or ""), header
    for header in ADDRESS_HEADERS:
        assert mailboxes(after, header) == mailboxes(before, header), header
    assert str(after["References"] or "").split() == str(before["References"] or "").split()
    assert abs(email.utils.parsedate_to_datetime(str(after["Date"])).timestamp()
               - email.utils.parsedate_to_datetime(str(before["Date"])).timestamp()) < 10 ** 9
    assert tree(after) == tree(before)
    for subtype in ("plain", "html"):
        assert body(after, subtype) == body(before, subtype)
        assert after.get_body((subtype,)).get_content_charset() == "utf-8"
    images_before = [p for p in before.walk() if p.get_content_maintype() == "image"]
    images_after = [p for p in after.walk() if p.get_content_maintype() == "image"]
    assert [(p["Content-ID"], p.get_content_disposition(), p.get_filename(), p.get_content())
            for p in images_after] == [
        (p["Content-ID"], p.get_content_disposition(), p.get_filename(), p.get_content())
        for p in images_before]


# --- lines, folding, encodings -----------------------------------------------------------------


LONG_NAMES = [("A" * 64, "a@customer.test"), ("é" * 64, "b@customer.test"),
              ("中文" * 32, "c@customer.test"), ("😀" * 64, "d@customer.test"),
              ('"Q" ' * 16, "e@customer.test")]


@pytest.mark.parametrize("subject", [
    "short",
    "a subject of many short words " * 8,
    "Ünïcödé wörds in a long subject that must be folded somewhere " * 3,
    "中文" * 120,
    "x" * 1200,
])
def test_crlf_everywhere_lines_short_headers_folded(subject: str) -> None:
    text = "first\nsecond\r\nthird\r" + "y" * 3000 + "\nlast"
    raw = compose(subject, text, "<p>" + "z" * 2000 + "</p>", (LOGO,),
                  headers(to_name="Zoë " * 16, cc=tuple(LONG_NAMES), thread_index="AQHZ",
                          thread_topic=subject))
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    lines = lines_of(raw)
    assert max(len(line) for line in lines) <= 998
    head = [line for line in lines if not line.startswith(b"--")]
    header_lines = header_block(raw).split(b"\r\n")
    assert max(len(line) for line in header_lines) <= 78, max(header_lines, key=len)
    for part in raw.split(b"\r\n\r\n")[1:]:  # part headers: each line at most 78 as well
        for line in part.split(b"\r\n"):
            if line.startswith((b"Content-", b" boundary")):
                assert len(line) <= 78, line
    assert head  # the check above saw the message
    msg = parse(raw)
    assert str(msg["Subject"]) == subject.strip()
    assert str(msg["Thread-Topic"]) == subject.strip()
    assert body(msg, "plain") == "first\nsecond\nthird\n" + "y" * 3000 + "\nlast"
    assert mailboxes(msg, "Cc") == [(display_name(n), a) for n, a in LONG_NAMES]
    assert mailboxes(msg, "To") == [(display_name("Zoë " * 16), "jane@customer.test")]


NAMES = {
    "ascii": "Jane Doe",
    "accent": "Zoë Ångström",
    "cjk": "中文 名字",
    "emoji": "Sunny 😀 Day 🎉",
    "long ascii": "Bartholomew-Maximilian Fitzgerald-Wolfeschlegelsteinhausen III Jr",
    "long non-ascii": "Ærøskøbing Ålesund Ørsted Ü" * 3,
    "quotes": 'John "Johnny" Doe',
    "comma": "Doe, John",
    "semicolon": "Sales; Europe",
    "backslash": "back\\slash \\\" tricky",
    "dots": "J. R. R. Tolkien",
    "encoded-word lookalike": "=?utf-8?q?Admin?= team",
    "parentheses": "Jane (Billing) <Doe>",
}


@pytest.mark.parametrize("key", list(NAMES))
def test_address_headers_parse_back_to_the_names_and_addresses_given(key: str) -> None:
    name = NAMES[key]
    raw = compose("s", "t\n", "<p>h</p>", (), headers(
        from_name=name, to_name=name, cc=((name, "cc.one@customer.test"),
                                          ("Plain", "cc-two@customer.test")),
    ))
    msg = parse(raw)
    expected = display_name(name)
    assert expected  # each of these is a name display_name keeps
    assert mailboxes(msg, "From") == [(expected, "support@example.com")]
    assert mailboxes(msg, "To") == [(expected, "jane@customer.test")]
    assert mailboxes(msg, "Cc") == [(expected, "cc.one@customer.test"),
                                    ("Plain", "cc-two@customer.test")]
    assert mailboxes(msg, "Reply-To") == [(expected, "support+t1.abc@example.com")]
    plain = email.message_from_bytes(raw, policy=email.policy.default)
    assert all(not plain[h].defects for h in ADDRESS_HEADERS)
    assert header_block(raw).isascii()
    assert max(len(line) for line in header_block(raw).split(b"\r\n")) <= 78


@pytest.mark.parametrize("subject", [
    "[#12] Re: My printer",
    "[#12] Re: Ünïcödé — 中文 🎉",
    "=?utf-8?q?URGENT?= pay now",  # must arrive as written, not decoded into "URGENT"
    "mixed =?iso-8859-1?q?x?= inside",
    "spaces   between    words",
    "under_scores and =equals= and ?questions?",
])
def test_subject_and_thread_topic_arrive_as_written(subject: str) -> None:
    raw = compose(subject, "t\n", "h", (), headers(thread_index="AQHZ", thread_topic=subject))
    msg = parse(raw)
    assert str(msg["Subject"]) == subject
    assert str(msg["Thread-Topic"]) == subject
    assert header_block(raw).isascii()


def test_control_characters_in_subject_and_topic_become_spaces() -> None:
    raw = compose("one\r\nBcc: x@evil.test\ttwo", "t\n", "h", (),
                  headers(thread_index="AQHZ", thread_topic="topic\nX-Evil: 1"))
    msg = parse(raw)
    assert str(msg["Subject"]) == "one Bcc: x@evil.test two"
    assert str(msg["Thread-Topic"]) == "topic X-Evil: 1"
    assert msg["Bcc"] is None and msg["X-Evil"] is None


BODIES = {
    "ascii": ("Hello,\n\nyour ticket is open.\n", "7bit"),
    "no final line end": ("Hello", "7bit"),
    "longer than 998": ("x" * 2500 + "\nshort\n", None),
    "trailing spaces": ("trailing   \nand a tab\t\nend  ", None),
    "dot line": ("before\n.\nafter\n", None),
    "from line": ("From me to you\nFrom\nFrom here\n", None),
    "long from line": ("From " + "é" * 10 + "x" * 150 + "\n" + "y" * 75 + "From z\n", None),
    "non-ascii": ("Grüße, 中文, 🎉\n", None),
    "mostly cjk": ("中文字符" * 400 + "\n", "base64"),
    "crlf input": ("a\r\nb\rc\n", "7bit"),
    "control characters": ("nul\x00 vt\x0b esc\x1b\n", None),
    "boundary lookalike": ("--=_0000\n--\n", "7bit"),
}


@pytest.mark.parametrize("key", list(BODIES))
def test_text_and_html_bodies_decode_to_exactly_the_input(key: str) -> None:
    text, cte = BODIES[key]
    raw = compose("s", text, text, (), headers())
    msg = parse(raw)
    expected = re.sub(r"\r\n?", "\n", text)
    for subtype in ("plain", "html"):
        assert body(msg, subtype) == expected
        part = msg.get_body((subtype,))
        encoding = part["Content-Transfer-Encoding"]
        if cte:
            assert encoding == cte
        else:
            assert encoding in ("quoted-printable", "base64")
    assert max(len(line) for line in lines_of(raw)) <= 998
    # nothing an mbox or an SMTP server would change: no line starting "From ", no lone "."
    for line in lines_of(raw.split(b"\r\n\r\n", 1)[1]):
        assert not line.startswith(b"From ") and line != b"."
        assert len(line) <= 78


def test_structure_alternative_with_related_images() -> None:
    icon = InlineImage("icon.1@mailgate", "image/gif", b"GIF89a" + bytes(range(256)) * 3,
                       "Ünïcödé icon with a long name for a small image, really.gif")
    raw = compose("s", "text\n", '<p><img src="cid:logo@mailgate"></p>', (LOGO, icon),
                  headers())
    msg = parse(raw)
    assert tree(msg) == ["multipart/alternative", "text/plain", "multipart/related",
                         "text/html", "image/png", "image/gif"]
    images = [p for p in msg.walk() if p.get_content_maintype() == "image"]
    for part, image in zip(images, (LOGO, icon), strict=True):
        assert part["Content-ID"] == f"<{image.cid}>"
        assert part.get_content_disposition() == "inline"
        assert part.get_filename() == image.filename
        assert part["Content-Transfer-Encoding"] == "base64"
        assert part.get_content() == image.data
        assert not part.defects
    for block in raw.split(b"Content-Transfer-Encoding: base64\r\n")[1:]:
        encoded = block.split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]
        assert max(len(line) for line in encoded.split(b"\r\n")) <= 76
    assert max(len(line) for line in header_block(raw).split(b"\r\n")) <= 78
    without = parse(compose("s", "text\n", "<p>h</p>", (), headers()))
    assert tree(without) == ["multipart/alternative", "text/plain", "text/html"]


def test_headers_kept() -> None:
    raw = compose("s", "t\n", "h", (), headers(
        in_reply_to="<m3@customer.test>",
        references=("m1@customer.test", "<m2@customer.test>", "m3@customer.test"),
        automatic=True, ticket_id=42, thread_index="AQHZabc=", thread_topic="Printer"))
    msg = parse(raw)
    sent = email.utils.parsedate_to_datetime(str(msg["Date"])).replace(tzinfo=UTC)
    assert abs(sent.timestamp() - time.time()) < 60  # "-0000": UTC, zone not stated
    assert msg["Message-ID"] == "<t1.abc@example.com>"
    assert msg["In-Reply-To"] == "<m3@customer.test>"
    assert b"References: <m1@customer.test>\r\n <m2@customer.test>\r\n <m3@customer.test>\r\n" \
        in raw
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Thread-Index"] == "AQHZabc=" and msg["Thread-Topic"] == "Printer"
    assert msg["X-Mailgate-Ticket"] == "42" and msg["MIME-Version"] == "1.0"
    generated = parse(compose("s", "t\n", "h", (), headers(generated=True, ticket_id=None)))
    assert generated["Auto-Submitted"] == "auto-generated"
    assert generated["X-Mailgate-Ticket"] is None and generated["Thread-Index"] is None
    plain = parse(compose("s", "t\n", "h", (), headers()))
    assert plain["Auto-Submitted"] is None and plain["References"] is None


@pytest.mark.parametrize("address", ["a b@example.com", "<a@example.com>", "a@example.com>",
                                     "a@example.com\r\nBcc: x@evil.test", "", "no-at-sign"])
def test_an_address_that_is_not_an_addr_spec_is_refused(address: str) -> None:
    with pytest.raises(BadAddress):
        compose("s", "t", "h", (), headers(to_addr=address))
    with pytest.raises(BadAddress):
        compose("s", "t", "h", (), headers(cc=(("x", address),)))


# --- DKIM -------------------------------------------------------------------------------------


def dnsfunc_for(record: str) -> Callable[..., bytes | None]:
    """dkimpy's DNS look-up, answering only the TXT record keygen printed."""
    name = record.split(" ", 1)[0]
    value = "".join(record.split(" IN TXT ", 1)[1].split('"')[1::2]).encode()

    def dnsfunc(qname: bytes, timeout: float = 5) -> bytes | None:
        return value if qname.decode() == name else None

    return dnsfunc


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dkim, Callable[..., Any]]:
    path, record = keygen(tmp_path_factory.mktemp("data"), "mg", "example.com", bits=1024)
    return Dkim("example.com", "mg", path), dnsfunc_for(record)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dkim_signature_verifies_on_the_composed_bytes(
        name: str, dkim_key: tuple[Dkim, Callable[..., Any]]) -> None:
    key, dnsfunc = dkim_key
    signed = sign(compose(*case_arguments(CASES[name])), key)
    assert dkimpy.verify(signed, dnsfunc=dnsfunc)
    assert not dkimpy.verify(signed.replace(b"\r\nX-Mailgate-Ticket: ", b"\r\nX-Other: ")
                             .replace(b"Subject: ", b"Subject: Fwd: "), dnsfunc=dnsfunc)


# --- round trip of arbitrary input ------------------------------------------------------------

PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs"))
TEXT = st.lists(st.one_of(
    st.text(PRINTABLE, max_size=30),
    st.sampled_from(["\n", "\r\n", "\r", " ", "\t", ".", "From ", "=", "--", " \n"]),
    st.integers(70, 1200).map(lambda n: "w" * n),
), max_size=30).map("".join)
ATOM = st.text(st.sampled_from("abcxyz019!#$%&'*+-/=?^_`{|}~"), min_size=1, max_size=12)
LOCAL = st.lists(ATOM, min_size=1, max_size=3).map(".".join)
DOMAIN = st.lists(st.text(st.sampled_from("abcdexyz0123"), min_size=1, max_size=10),
                  min_size=2, max_size=3).map(".".join)
ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN)
NAME = st.lists(st.one_of(st.text(PRINTABLE, max_size=20),
                          st.sampled_from(['"', ",", ";", "\\", " ", "=?", "?=", "é" * 30])),
                max_size=8).map("".join)


@settings(max_examples=300, deadline=None, database=None)
# found by this test: the comma after an address took a folded Cc line to 79 characters
@example(subject="", text="", html="", to_name="", to_addr="0@0.0", from_name="",
         cc=[("\u00a1000" + "\u00a1" * 8 + "\U00010000", "000000000000@0.00.00000"),
             ("", "0@0.0")])
@given(subject=st.text(PRINTABLE, max_size=300), text=TEXT, html=TEXT, to_name=NAME,
       to_addr=ADDRESS, cc=st.lists(st.tuples(NAME, ADDRESS), max_size=3), from_name=NAME)
def test_round_trip_of_arbitrary_text_subjects_and_names(
        subject: str, text: str, html: str, to_name: str, to_addr: str,
        cc: list[tuple[str, str]], from_name: str) -> None:
    raw = compose(subject, text, html, (), headers(
        from_name=from_name, to_name=to_name, to_addr=to_addr, cc=tuple(cc),
        thread_index="AQHZ", thread_topic=subject))
    assert max(len(line) for line in lines_of(raw)) <= 998
    assert b"\n" not in raw.replace(b"\r\n", b"")
    field = b""
    for line in lines_of(raw):  # at most 78 but in a Subject or Thread-Topic with long spaces
        field = field if line[:1] in (b" ", b"\t") else line.partition(b":")[0]
        assert len(line) <= 78 or field in (b"Subject", b"Thread-Topic"), line
        assert not line.startswith(b"From ") and line != b"."
    msg = parse(raw)
    assert str(msg["Subject"]) == CONTROLS.sub(" ", subject).strip()
    assert str(msg.get("Thread-Topic") or "") == CONTROLS.sub(" ", subject).strip()
    assert mailboxes(msg, "From") == [(display_name(from_name), "support@example.com")]
    assert mailboxes(msg, "To") == [(display_name(to_name), to_addr)]
    assert mailboxes(msg, "Cc") == [(display_name(n), a) for n, a in cc]
    assert body(msg, "plain") == re.sub(r"\r\n?", "\n", text)
    assert body(msg, "html") == re.sub(r"\r\n?", "\n", html)
