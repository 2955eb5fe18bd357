"""Parse, classify and reply_text never raise, for any bytes (issue 11), and the bounds that make
their work linear leave real mail alone (issue 17).

A hypothesis test sends hostile messages (tests/mail_strategies.py) through the three stages;
the long campaign is bench/fuzz.py. The findings of issue 11's fuzzer are pinned below, each with
the defect it now records. The linear rewrites of quadratic patterns are checked against the
patterns they replace.
"""

from __future__ import annotations

import logging
import re

import mail_strategies
import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate import mailbounds
from mailgate.auth import results
from mailgate.classify import CLASSIFY_FAILED, classify
from mailgate.model import ParsedMail
from mailgate.parsing import htmltext
from mailgate.parsing.parse import PARSE_FAILED, parse, safe_filename
from mailgate.parsing.replytext import REPLY_FAILED, reply_text
from mailgate.threading import match

SENDERS = ("", "jane@client.test", "MAILER-DAEMON@mx.test")


class _Failures(logging.Handler):
    """Counts the last-resort paths of classify and reply_text (they log; parse says so in its
    defects)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith((REPLY_FAILED, CLASSIFY_FAILED)):
            self.seen.append(record.getMessage())


def _all_stages(raw: bytes, sender: str = "") -> ParsedMail:
    failures = _Failures()
    loggers = [logging.getLogger(n) for n in ("mailgate.replytext", "mailgate.classify")]
    for log in loggers:
        log.addHandler(failures)
    try:
        parsed = parse(raw)
        result = classify(parsed, raw, sender)
        reply_text(parsed.text, parsed.html)
    finally:
        for log in loggers:
            log.removeHandler(failures)
    assert not [d for d in parsed.defects if d.startswith(PARSE_FAILED)], parsed.defects
    assert not result.reason.startswith(CLASSIFY_FAILED), result.reason
    assert not failures.seen, failures.seen
    return parsed


@pytest.fixture(autouse=True, scope="module")
def _small_sizes() -> None:
    sizes = mail_strategies.SIZES
    saved = (sizes.deep, sizes.wide, sizes.run, sizes.html_depth)
    sizes.deep, sizes.wide, sizes.run, sizes.html_depth = 120, 200, 2000, 200
    yield
    sizes.deep, sizes.wide, sizes.run, sizes.html_depth = saved


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mail_strategies.hostile_messages(), st.sampled_from(SENDERS))
def test_hostile_messages_never_make_a_stage_raise(raw: bytes, sender: str) -> None:
    _all_stages(raw, sender)


# --- issue 11's findings -----------------------------------------------------------------------


def _mail(headers: bytes = b"", body: bytes = b"hello\r\n",
          ctype: bytes = b"text/plain; charset=utf-8") -> bytes:
    return (b"From: Jane <jane@client.test>\r\nTo: support@example.com\r\n" + headers
            + b"Content-Type: " + ctype + b"\r\n\r\n" + body)


def _nested(depth: int) -> bytes:
    out = [b"From: jane@client.test\r\nSubject: deep\r\n"]
    for i in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
    out.append(b"Content-Type: text/plain\r\n\r\ninnermost\r\n")
    out += [b"--b%d--\r\n" % i for i in reversed(range(depth))]
    return b"".join(out)


FINDINGS = {
    "nul-in-a-header": (_mail(b"Subject: a\x00b\r\n", ctype=b"text/plain; charset=utf\x00-8"),
                        "unknown charset"),
    "idna-charset": (_mail(b"Subject: =?idna?q?xn--zz-=FF?=\r\n", body=b"xn--invalid-\xff\r\n",
                           ctype=b"text/plain; charset=idna"), "unknown charset"),
    "charset-base64-word": (_mail(b"Subject: =?base64?b?aGVsbG8=?= =?hex?q?41?=\r\n"),
                            "unknown charset"),
    "charset-base64-part": (_mail(body=b"hello\xff\r\n", ctype=b"text/plain; charset=base64"),
                            "unknown charset"),
    "codec-undefined": (_mail(b"Subject: =?undefined?q?a?=\r\n",
                              body=b"8-bit \xe9t\xe9\r\n", ctype=b"text/plain; charset=undefined"),
                        "unknown charset"),
    "codec-punycode": (_mail(body=b"a-\xc3\xa9" * 1000, ctype=b"text/plain; charset=punycode"),
                       "unknown charset"),
    "mime-nested-1000": (_nested(1000), "MIME parts nested deeper than 50 levels"),
}


@pytest.mark.parametrize("name", list(FINDINGS))
def test_issue_11_findings_record_a_defect_and_go_on(name: str) -> None:
    raw, defect = FINDINGS[name]
    parsed = _all_stages(raw)
    assert parsed.from_.email == "jane@client.test"
    if defect:
        assert any(defect in d for d in parsed.defects), parsed.defects


def test_ten_thousand_parts_keep_the_first_thousand() -> None:
    raw = mail_strategies._deep(0, 10_000)
    parsed = _all_stages(raw)
    assert "part 0\n" in parsed.text + "\n" and "part 999\n" in parsed.text + "\n"
    assert "part 1000" not in parsed.text
    assert any("more than 1000 MIME parts: 9000 not parsed" in d for d in parsed.defects)


def test_a_huge_header_is_cut_and_the_rest_still_read() -> None:
    raw = (b"Subject: " + b"x" * 200_000 + b"\r\nFrom: Jane <jane@client.test>\r\n"
           b"To: support@example.com\r\nMessage-ID: <after@client.test>\r\n\r\nbody\r\n")
    parsed = _all_stages(raw)
    assert parsed.from_.email == "jane@client.test" and parsed.message_id == "after@client.test"
    assert parsed.subject == "x" * 2000
    assert any(d.startswith("header subject: longer than 65536") for d in parsed.defects)


def test_bounds_leave_real_mail_untouched() -> None:
    files = [p for p in CORPUS.rglob("*") if p.is_file() and p.suffix not in (".md", ".tsv")]
    assert len(files) > 300
    for path in files:
        raw = path.read_bytes()
        bounded = mailbounds.bound(raw)
        # nothing cut; a long body is only set aside (read from the raw bytes when needed)
        assert bounded.restore(bounded.raw) == raw and not bounded.defects, (path,
                                                                             bounded.defects)


def test_a_refused_charset_is_renamed_only_where_it_is_named() -> None:
    raw = (b"Subject: =?punycode?q?abc?= =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain;"
           b" name*=undefined''abc; charset=utf-8\r\n\r\nbody")
    bounded = mailbounds.bound(raw)
    assert bounded.raw == raw.replace(b"punycode", b"us-ascii").replace(b"undefined", b"us-ascii")
    assert parse(raw).subject == "abccafé"  # the space between two encoded words goes


def test_html_is_cut_at_the_tag_bound_and_says_so() -> None:
    html = "<p>first</p>" + "<div>" * 100_000 + "deep" + "</div>" * 100_000
    defects: list[str] = []
    clean = htmltext.sanitize(html, defects)
    assert clean.startswith("<p>first</p><div>") and "deep" not in clean
    assert defects == [f"HTML with more than {htmltext.MAX_HTML_TAGS} tags: cut for display"]
    assert htmltext.to_text(html).startswith("first")
    small = '<p onclick="x()">hi <script>alert(1)</script><a href="javascript:x">l</a></p>'
    assert htmltext.sanitize(small) == '<p>hi <a rel="noopener noreferrer nofollow">l</a></p>'


@pytest.mark.parametrize("name, shown", [
    ("invoice\u202efdp.exe", "invoice_fdp.exe"),
    ("\u2066report\u2069.pdf\u200b", "_report_.pdf_"),
    ("a\u2028b.txt", "a_b.txt"),
    ("x\udcff.txt", "x_.txt"),
    ("../../etc/passwd", "passwd"),
    ("é" * 300 + ".pdf", "é" * 98 + ".pdf"),
])
def test_safe_filename_neutralises_what_hides_a_name(name: str, shown: str) -> None:
    assert safe_filename(name) == shown


# --- the linear rewrites answer as the patterns they replace ----------------------------------

_TEXT = st.text(alphabet=' \t\r\n\x0b\u3000ab"\\();@<>,:', max_size=30)


@settings(max_examples=500, deadline=None, database=None)
@given(_TEXT)
def test_unfold_matches_the_old_pattern(text: str) -> None:
    assert mailbounds.unfold(text) == re.sub(r"\s*\r?\n\s*", " ", text)


@settings(max_examples=500, deadline=None, database=None)
@given(_TEXT)
def test_results_readers_match_the_old_patterns(text: str) -> None:
    assert results._empty_quotes(text) == re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    old, previous = text, None
    while previous != old:
        previous, old = old, re.sub(r"\([^()]*\)", " ", old)
    assert results._without_comments(text) == old


@settings(max_examples=500, deadline=None, database=None)
@given(_TEXT)
def test_address_tokens_match_the_old_pattern(text: str) -> None:
    old = re.compile(r"[^\s<>,;:\"()]+@[^\s<>,;:\"()]+")
    assert match._ADDR.findall(text) == old.findall(text)
