"""Hypothesis strategies for hostile mail, for the never-raise test and bench/fuzz.py.

Input: none (definitions). Output: `hostile_messages()`, a strategy of raw message bytes built
the way a hostile or broken sender builds them: random header fields (addresses with encoded
CR LF in display names, IDNA and punycode domains that do not decode, NUL and 8-bit bytes,
encoded words with odd or unknown charsets such as `base64`, `undefined`, `punycode`, RFC 2231
parameters, folding, huge runs of white space), nested multiparts (digests, reports, colliding
and missing boundaries, message/rfc822 parts), random bodies in every transfer encoding, HTML
with deep nesting, now and then a MIME tree nested hundreds of levels deep or thousands of parts
wide, and CRLF, LF or CR line ends. `SIZES` scales the big cases (the suite keeps them small,
the long campaign of bench/fuzz.py makes them bigger). Trust: test code.
"""

from __future__ import annotations

import base64
import quopri
from dataclasses import dataclass

from hypothesis import strategies as st


@dataclass
class Sizes:
    deep: int = 400  # most MIME nesting levels of the occasional deep tree
    wide: int = 1500  # most parts of the occasional wide multipart
    run: int = 20_000  # longest run of white space or of one character in a header
    html_depth: int = 2_000


SIZES = Sizes()

CHARSETS = ["utf-8", "us-ascii", "iso-8859-1", "windows-1252", "koi8-r", "gb2312", "shift_jis",
            "utf-16", "utf-7", "base64", "undefined", "punycode", "idna", "rot13", "hex",
            "unicode_escape", "x-unknown", "unknown-8bit", "", "utf-8*en", "utf\x00-8",
            "é", "x" * 70, '"utf-8"', "utf-8'", "zlib", "uu", "cp65001", "latin1 ", "UTF8"]
HEADER_NAMES = ["From", "To", "Cc", "Reply-To", "Subject", "Message-ID", "In-Reply-To",
                "References", "Date", "Sender", "Return-Path", "Auto-Submitted", "X-Autoreply",
                "Precedence", "List-Id", "List-Unsubscribe", "X-Failed-Recipients",
                "Delivered-To", "X-Original-To", "X-Forwarded-To", "Content-Type",
                "Content-Transfer-Encoding", "Content-Disposition", "MIME-Version",
                "X-Auto-Response-Suppress", "Received", "Authentication-Results",
                "DKIM-Signature", "X-Mailer", "Feedback-Type", "Resent-From"]
CTYPES = ["text/plain", "text/html", "text/enriched", "text/rfc822-headers",
          "message/rfc822", "message/delivery-status", "message/global-delivery-status",
          "message/feedback-report", "message/partial", "application/octet-stream",
          "application/json", "image/png", "application/ms-tnef", "text/x-unknown",
          "multipart/mixed", "garbage", "text/", "/", "multipart/"]
ENCODINGS = ["7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "uuencode",
             "BASE64", "junk", ""]

_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
_word = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                              exclude_characters='<>()@,;:\\"[]?='), min_size=1, max_size=12)
_bidi = st.sampled_from(["\u202e", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069",
                         "\u200f", "\u200e", "\u061c", "\ufeff", "\u200b"])


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


_CHARSET = st.sampled_from(CHARSETS)
_KIND = st.sampled_from(["q", "b", "Q", "B", "x"])
_FIXED_PAYLOAD = st.sampled_from([
    b"x=0D=0ABcc:_evil@attacker.test", b"=3Cevil=40attacker.test=3E", b"=00=FF=", b"_____",
    b"hello_world", b"=E2=80=AEfdp.exe", b""])
_WORD_END = st.sampled_from([b"?=", b"?=", b"?=", b"", b"?"])
_SMALL_BINARY = st.binary(max_size=24)


@st.composite
def encoded_word(draw: st.DrawFn) -> bytes:
    charset = draw(_CHARSET)
    kind = draw(_KIND)
    if draw(st.booleans()):
        payload = draw(_FIXED_PAYLOAD)
    else:
        raw = draw(_SMALL_BINARY)
        payload = base64.b64encode(raw) if kind in "bB" else quopri.encodestring(raw)
    if draw(st.booleans()):
        payload = payload[: draw(st.integers(0, len(payload)))]  # cut: bad padding, bad =XX
    return b"=?" + _b(charset) + b"?" + _b(kind) + b"?" + payload + draw(_WORD_END)


_DOMAIN = st.sampled_from([
    b"example.com", b"client.test", b"xn--invalid-.test", b"xn--", b"xn--zz.test",
    b"xn--a.xn--b", b"b\xc3\xbccher.de", b"[127.0.0.1]", b"[IPv6:::1]", b"..", b"a..b",
    b"-x-.test", b"x" * 70 + b".test", b"\x00.test", b"\xff\xfe.test",
    b"xn--ls8h.la", b"xn--" + b"a" * 60 + b".test",
]) | _word.map(lambda w: _b(w) + b".test")
_LOCAL = st.sampled_from([b"jane", b"a.b+tag", b'"quoted name"', b"\xc3\xa9l\xc3\xa8ve", b"",
                          b"a@b", b"mailer-daemon", b"postmaster", b"x\x00y"]) | _word.map(_b)
_NAME = st.sampled_from([b"Jane Doe", b'"Doe, Jane"', b"", b"\xe2\x80\xae evil"]) | encoded_word()


@st.composite
def address(draw: st.DrawFn) -> bytes:
    addr = draw(_LOCAL) + b"@" + draw(_DOMAIN)
    form = draw(st.integers(0, 7))
    name = draw(_NAME)
    if form == 0:
        return addr
    if form == 1:
        return name + b" <" + addr + b">"
    if form == 2:
        return b"<" + addr
    if form == 3:
        return b"group: " + addr + b", " + addr + b";"
    if form == 4:
        return b"(" * draw(st.integers(1, 200)) + addr
    if form == 5:
        return b"a:" * draw(st.integers(1, 200)) + addr
    if form == 6:
        return b", ".join([addr] * draw(st.integers(2, 30)))
    return name + b" <" + addr + b"> (comment (nested)) , <>"


_CONTROL_BYTES = st.sampled_from([b"\x00", b"\x00\x00x", b"\x7f", b"\x1b[31m", b"\xff", b"\xc3",
                                  b"\xe2\x80\xae"])
_RUN = st.sampled_from([b" ", b"\t", b"a", b"@", b"=?", b"=?a?q?x ", b";", b'"', b"(", b"<", b"\\",
                        b"\r\n "])
_ODD_VALUE = st.sampled_from([
    b"<id@x>", b"<<>>", b"<a b@c>", b"no brackets", b"Mon, 32 Foo 99999 25:61:61",
    b"Thu, 01 Jan 1970 00:00:00 +9999", b"auto-replied", b"bulk", b"no",
    b"multipart/mixed; boundary=x", b'text/plain; charset="base64"',
    b"attachment; filename*=punycode''" + b"a" * 200,
    b"attachment; filename*=utf-8''%E2%80%AEfdp.exe",
    b"i=1; mx.test; dkim=pass header.d=x (((c)) \"q\\\" ;)"])
_TEXT = st.text(max_size=20)
_BINARY = st.binary(max_size=30)
_SEP = st.sampled_from([b" ", b"", b"\r\n ", b", "])


@st.composite
def header_value(draw: st.DrawFn, name: str) -> bytes:
    pieces = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            pieces.append(_b(draw(_ascii)))
        elif kind == 1:
            pieces.append(draw(_BINARY).replace(b"\n", b"").replace(b"\r", b""))
        elif kind == 2:
            pieces.append(draw(encoded_word()))
        elif kind == 3:
            pieces.append(draw(address()))
        elif kind == 4:
            pieces.append(draw(_CONTROL_BYTES))
        elif kind == 5:
            run = draw(_RUN)
            pieces.append(run * draw(st.integers(1, SIZES.run // len(run))))
        elif kind == 6:
            pieces.append(draw(_ODD_VALUE))
        elif kind == 7:
            pieces.append(_b(draw(_TEXT)).replace(b"\r", b"").replace(b"\n", b""))
        elif kind == 8:
            pieces.append(_b(draw(_bidi)) + _b(draw(_word)))
        else:
            pieces.append(b"\r\n\t" + _b(draw(_ascii)))  # folding
    return draw(_SEP).join(pieces)


_MESSAGE_NAMES = st.sampled_from(HEADER_NAMES) | _word
_PART_NAMES = st.sampled_from(["Content-Type", "Content-Disposition", "Content-Transfer-Encoding",
                               "Content-ID", "Content-Description", "X-Junk"]) | _word
_BROKEN_NAMES = st.sampled_from(["From ", "X\x00Y", "\xe9t\xe9", " indent", "", "::"])


@st.composite
def header_block(draw: st.DrawFn, part: bool = False) -> list[bytes]:
    lines = []
    for _ in range(draw(st.integers(0, 6 if not part else 2))):
        name = draw(_PART_NAMES if part else _MESSAGE_NAMES)
        if draw(st.integers(0, 30)) == 0:  # a broken field name
            name = draw(_BROKEN_NAMES)
        lines.append(_b(name) + b": " + draw(header_value(name)))
    return lines


_FILENAMES = st.sampled_from([b"report.pdf", b"..\\..\\evil.exe", b"invoice\xe2\x80\xaefdp.exe",
                              b"a" * 300 + b".pdf", b"", b"x\x00y.txt", b"\xff.bin"])
_NAME_PARAMS = st.sampled_from([b'; name="', b"; filename=", b"; filename*=utf-8''",
                                b"; filename*0*=undefined''", b"; name*=base64'en'"])


@st.composite
def params(draw: st.DrawFn, ctype: str) -> bytes:
    out = b""
    if ctype.startswith("text/") or draw(st.booleans()):
        out += b"; charset=" + _b(draw(_CHARSET))
    if draw(st.integers(0, 3)) == 0:
        out += draw(_NAME_PARAMS) + draw(_FILENAMES)
    return out


_HTML_TAGS = st.sampled_from(["div", "b class=x", "a", "table><tr><td", "ul><li",
                              "blockquote class=gmail_quote", "!--", "font size=2"])
_BODY = _BINARY | _ascii.map(_b) | st.sampled_from([
    b"Out of office", b"-- \r\nsig", b"=\r\n=ZZ", b"begin 644 x",
    b"On Mon, Jane <j@x.test> wrote:\r\n> quoted", b"<!--" * 400, b"--b0\r\n"])
_ENCODING = st.sampled_from(ENCODINGS)
_CTYPE = st.sampled_from(CTYPES)
_SUBTYPE = st.sampled_from(["mixed", "alternative", "related", "digest", "report", "signed",
                            "x-junk"])
_BOUNDARY = (st.sampled_from([b"b0", b"b1", b"=_x", b"", b" ", b"b0 ", b"--", b"b0--"])
             | _word.map(_b))
_PREAMBLE = st.sampled_from([b"", b"preamble\r\n"])
_AFTER_BOUNDARY = st.sampled_from([b"", b"  ", b"--"])
_QUOTE = st.sampled_from([b'"', b""])
_ENDING = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"])


def _leaf(draw: st.DrawFn, ctype: str) -> tuple[list[bytes], bytes]:
    cte = draw(_ENCODING)
    if ctype == "text/html":
        depth = draw(st.integers(0, SIZES.html_depth))
        tag = draw(_HTML_TAGS)
        body = _b(f"<{tag}>" * depth + "hi" + draw(_ascii) + f"</{tag.split()[0]}>" * depth)
    elif ctype.startswith("message/delivery-status"):
        body = (b"Reporting-MTA: dns; mx.test\r\n\r\nFinal-Recipient: rfc822; "
                + draw(address()) + b"\r\nAction: failed\r\nStatus: 5.1.1\r\n")
    else:
        body = draw(_BODY)
    if cte.lower() == "base64" and draw(st.booleans()):
        body = base64.encodebytes(body)
    elif cte == "quoted-printable" and draw(st.booleans()):
        body = quopri.encodestring(body)
    headers = [b"Content-Type: " + _b(ctype) + draw(params(ctype))]
    if cte:
        headers.append(b"Content-Transfer-Encoding: " + _b(cte))
    headers += draw(header_block(part=True))
    return headers, body


@st.composite
def mime_part(draw: st.DrawFn, depth: int = 0) -> tuple[list[bytes], bytes]:
    ctype = draw(_CTYPE)
    if depth < 3 and (ctype.startswith("multipart/") or draw(st.integers(0, 2 + 2 * depth)) == 0):
        subtype = draw(_SUBTYPE)
        boundary = draw(_BOUNDARY)
        children = [draw(mime_part(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
        body = draw(_PREAMBLE) + (b"--" + boundary + b"--\r\n" if draw(st.integers(0, 9)) == 0
                                    else b"")
        for headers, child_body in children:
            body += b"--" + boundary + draw(_AFTER_BOUNDARY) + b"\r\n"
            body += b"\r\n".join(headers) + b"\r\n\r\n" + child_body + b"\r\n"
        if draw(st.integers(0, 3)):
            body += b"--" + boundary + b"--\r\n"
        body += [b"", b"epilogue\r\n", b"--" + boundary + b"\r\nX: y\r\n"][draw(st.integers(0, 2))]
        quote = draw(_QUOTE)
        return [b"Content-Type: multipart/" + _b(subtype) + b"; boundary=" + quote + boundary
                + quote], body
    if ctype == "message/rfc822":
        headers, body = draw(message_bytes(depth + 1))
        return [b"Content-Type: message/rfc822"], headers + b"\r\n\r\n" + body
    return _leaf(draw, ctype)


@st.composite
def message_bytes(draw: st.DrawFn, depth: int = 0) -> tuple[bytes, bytes]:
    lines = draw(header_block())
    part_headers, body = draw(mime_part(depth))
    return b"\r\n".join(lines + part_headers), body


def _deep(depth: int, wide: int) -> bytes:
    out = [b"From: deep@client.test\r\nSubject: deep\r\n"]
    for i in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="d%d"\r\n\r\n--d%d\r\n' % (i, i))
    out.append(b'Content-Type: multipart/mixed; boundary="w"\r\n\r\n')
    for i in range(wide):
        out.append(b"--w\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i)
    out.append(b"--w--\r\n")
    out += [b"--d%d--\r\n" % i for i in reversed(range(depth))]
    return b"".join(out)


@st.composite
def hostile_messages(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 40)) == 0:  # now and then: very deep or very wide
        raw = _deep(draw(st.integers(0, SIZES.deep)), draw(st.integers(0, SIZES.wide)))
    else:
        headers, body = draw(message_bytes())
        raw = headers + b"\r\n\r\n" + body
    ending = draw(_ENDING)
    if ending != b"\r\n":
        raw = raw.replace(b"\r\n", ending)
    return raw
