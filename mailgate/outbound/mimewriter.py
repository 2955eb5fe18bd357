"""Writing MIME: header fields and body parts of an outgoing message, as text with CRLF line ends.

Input: header values and body text that `compose` has already checked (addresses are plain
addr-specs, display names one short line, Message-IDs clean) but whose characters still come
partly from mail: any Unicode, `"` `\\` `,` `;` in names, words that look like RFC 2047 encoded
words, lines of any length, trailing spaces, lone surrogates. Nothing here trusts a value to be
safe to write as it is except `raw_field` (the caller's own ASCII: dates, ids, tokens).

Output: header fields folded at 78 characters wherever a fold is possible (never longer than
998), non-ASCII (and anything a reader would mistake for an encoded word) as RFC 2047 UTF-8
encoded words, display names quoted when they carry specials; body parts in 7bit only when that
is safe (ASCII, lines of at most 78 characters, no trailing white space, no control character,
no line starting "From " or that is only "."), else quoted-printable or base64, whichever is
shorter; inline images base64 in lines of 76. Every value reads back (RFC 2047 §6.2; the stdlib
`email` with `policy.default`) as exactly what was given. Lone surrogates, which UTF-8 cannot
carry, become U+FFFD.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass

CRLF = "\r\n"
FOLD_AT = 78  # RFC 5322 §2.1.1: SHOULD
MAX_WORD = 76  # an unencoded word longer than this could not be folded under FOLD_AT
_EW_OVERHEAD = len("=?utf-8?q??=")
_MIN_ROOM = _EW_OVERHEAD + 12  # a first encoded word shorter than this goes to the next line
# RFC 2047 §5(3): characters that may stand for themselves in a Q-encoded word in a phrase.
_Q_SAFE = frozenset(string.ascii_letters + string.digits + "!*+-/")
_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_WORDS = re.compile(r"( *)([^ ]+)")
_LINE_END = re.compile(r"\r\n?")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_UNSAFE_7BIT = re.compile(r"[^\t\n\x20-\x7e]|[ \t]$|^From |^\.$|[^\n]{79}", re.MULTILINE)
_FROM_LINE = re.compile(r"^(From [^\n]*)", re.MULTILINE)
# RFC 2231 attribute-char: what an extended parameter value may carry unescaped.
_ATTR_CHAR = frozenset(string.ascii_letters + string.digits + "!#$&+-.^_`|~")
_TOKEN = re.compile(r"[A-Za-z0-9!#$&^_.+-]+\Z")  # RFC 2045 token, for a media type's parts
_FILENAME = re.compile(r"[ -~]{1,60}\Z")  # written as a quoted string when it matches


@dataclass(frozen=True)
class Part:
    """One MIME entity: its header lines (already folded) and its encoded body."""

    headers: tuple[str, ...]
    body: str

    def text(self) -> str:
        return CRLF.join(self.headers) + CRLF + CRLF + self.body


# --- header fields ----------------------------------------------------------------------------


def _fold(name: str, chunks: Sequence[tuple[str, str, bool]]) -> str:
    """`name:` and the chunks, each (white space before it, text, whether the text is to be
    written as encoded words). A line grows until the next chunk would take it past FOLD_AT;
    then the fold (CRLF) goes before that chunk's white space, so unfolding gives back exactly
    the value. A chunk with no white space before it is never moved to a new line. Text to be
    encoded becomes encoded words here, the first one cut to the room left on its line."""
    lines: list[str] = []
    line = name + ":"
    bare = True  # nothing after "name:" yet: a fold there would gain nothing
    for sep, text, encode in chunks:
        if encode:
            room = FOLD_AT - len(line) - len(sep)
            words = encoded_words(text, room if room >= _MIN_ROOM else 75)
            pieces = [(sep if i == 0 else " ", word) for i, word in enumerate(words)]
        else:
            pieces = [(sep, text)]
        for piece_sep, piece in pieces:
            if piece_sep and not bare and len(line) + len(piece_sep) + len(piece) > FOLD_AT:
                lines.append(line)
                line = piece_sep + piece
            else:
                line += piece_sep + piece
            bare = False
    lines.append(line)
    return CRLF.join(lines)


def raw_field(name: str, value: str) -> str:
    """`name: value` as it is: for values we made ourselves (ASCII, one line, short)."""
    return f"{name}: {value}"


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _q_char(c: str) -> str:
    if c in _Q_SAFE:
        return c
    if c == " ":
        return "_"
    return "".join(f"={b:02X}" for b in _utf8(c))


def encoded_words(text: str, first: int = 75) -> list[str]:
    """`text` as RFC 2047 UTF-8 encoded words, Q or B (the shorter), the first at most `first`
    characters long, the others at most 75, each one decodable alone (a character is never
    split between two)."""
    q_text = [_q_char(c) for c in text]
    q_length = sum(map(len, q_text))
    b_length = (len(_utf8(text)) + 2) // 3 * 4
    words: list[str] = []
    room = first - _EW_OVERHEAD
    if q_length <= b_length:
        current = ""
        for q in q_text:
            if current and len(current) + len(q) > room:
                words.append(f"=?utf-8?q?{current}?=")
                current, room = "", 75 - _EW_OVERHEAD
            current += q
        words.append(f"=?utf-8?q?{current}?=")
        return words
    chunk = b""
    for c in text:
        data = _utf8(c)
        if chunk and (len(chunk) + len(data) + 2) // 3 * 4 > room:
            words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
            chunk, room = b"", 75 - _EW_OVERHEAD
        chunk += data
    words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
    return words


def _must_encode(word: str) -> bool:
    return not word.isascii() or "=?" in word or len(word) > MAX_WORD


def unstructured(name: str, value: str) -> str:
    """An unstructured field (Subject, Thread-Topic) whose value has no control characters and
    no leading white space. Words that are ASCII stay readable; a run of words that need
    encoding (non-ASCII, `=?`, too long to fold) becomes encoded words, the spaces between those
    words encoded with them (a reader drops white space between adjacent encoded words)."""
    chunks: list[tuple[str, str, bool]] = []
    run_sep, run = "", ""
    for sep, word in _WORDS.findall(value):
        if _must_encode(word):
            if run:
                run += sep + word
            else:
                run_sep, run = sep, word
            continue
        if run:
            chunks.append((run_sep, run, True))
            run = ""
        chunks.append((sep, word, False))
    if run:
        chunks.append((run_sep, run, True))
    if chunks:
        chunks[0] = (" ", *chunks[0][1:])
    return _fold(name, chunks)


def _phrase(name: str) -> list[tuple[str, str, bool]]:
    """A display name (one line) as chunks: atoms as they are, a quoted string when it has
    specials, encoded words when it is not plain ASCII."""
    words = _WORDS.findall(name)
    if any(_must_encode(word) for _sep, word in words):
        return [(" ", name.lstrip(" "), True)]
    if all(c in _ATEXT for _sep, word in words for c in word):
        return [(" " if i == 0 else sep, word, False) for i, (sep, word) in enumerate(words)]
    quoted = [word.replace("\\", "\\\\").replace('"', '\\"') for _sep, word in words]
    if any(len(word) > MAX_WORD - 2 for word in quoted):  # too long to fold once escaped
        return [(" ", name.lstrip(" "), True)]
    quoted[0] = '"' + quoted[0]
    quoted[-1] += '"'
    return [(" " if i == 0 else words[i][0], word, False) for i, word in enumerate(quoted)]


def addr_spec(address: str) -> str:
    """`local@domain`, the local part quoted when it is not a dot-atom. A non-ASCII local part is
    written in UTF-8 (RFC 6532): there is no other way to write that address."""
    local, _, domain = address.rpartition("@")
    pieces = local.split(".")
    if all(pieces) and all(c in _ATEXT or not c.isascii() for c in local.replace(".", "")):
        return address
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"@' + domain


def address_list(name: str, mailboxes: Sequence[tuple[str, str]]) -> str:
    """An address field (From, To, Cc, Reply-To) of (display name, address) pairs, the names
    already cut to one line, the addresses already checked."""
    chunks: list[tuple[str, str, bool]] = []
    for i, (display, address) in enumerate(mailboxes):
        spec = addr_spec(address)
        # the comma goes with the address before it, so the fold that address gets counts it
        comma = "," if i < len(mailboxes) - 1 else ""
        if display:
            chunks.extend(_phrase(display))
            chunks.append((" ", f"<{spec}>{comma}", False))
        else:
            chunks.append((" ", spec + comma, False))
    return _fold(name, chunks)


def _parameter(name: str, value: str) -> list[str]:
    """`name="value"`, or RFC 2231 `name*0*=utf-8''...` continuations (each at most 60
    characters of value, so each fits a line) when the value is not short printable ASCII
    without `"` and `\\`."""
    if _FILENAME.match(value) and '"' not in value and "\\" not in value:
        return [f'{name}="{value}"']
    pieces, piece = [], ""
    for c in value:
        escaped = c if c in _ATTR_CHAR else "".join(f"%{b:02X}" for b in _utf8(c))
        if len(piece) + len(escaped) > 60:
            pieces.append(piece)
            piece = ""
        piece += escaped
    pieces.append(piece)
    charset = "utf-8''"
    return [f"{name}*{i}*={charset if i == 0 else ''}{piece}" for i, piece in enumerate(pieces)]


def _with_parameters(name: str, value: str, parameters: Sequence[str]) -> str:
    """A field `name: value; p1; p2...`, folded before each parameter that would not fit."""
    chunks = [(" ", value, False)]
    for parameter in parameters:
        chunks += [("", ";", False), (" ", parameter, False)]
    return _fold(name, chunks)


# --- body parts -------------------------------------------------------------------------------


def _qp(data: bytes) -> str:
    """Quoted-printable of LF-ended text, with CRLF line ends; a line-start "From " is written
    `=46rom ` (mbox readers would otherwise change it); binascii already encodes a lone "."."""
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).decode("ascii")
    if "From " in encoded:
        encoded = _FROM_LINE.sub(_escaped_from, encoded)
    return encoded.replace("\n", CRLF)


def _escaped_from(match: re.Match[str]) -> str:
    """`=46rom ` for a line's "From "; a line that grows past 76 gets a soft break."""
    line = "=46rom " + match.group(1)[len("From "):]
    if len(line) <= 76:
        return line
    soft = line.endswith("=")
    content = line[:-1] if soft else line
    cut = 75 if "=" not in content[73:75] else content.rindex("=", 0, 75)
    return content[:cut] + "=\n" + content[cut:] + ("=" if soft else "")


def _base64_lines(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii").replace("\n", CRLF)


def text_part(subtype: str, text: str) -> Part:
    """A text/<subtype>; charset="utf-8" part whose decoded body is `text` with its line ends
    made CRLF — exactly, to the last character (no line end is added)."""
    text = _LINE_END.sub("\n", text)
    headers = (f'Content-Type: text/{subtype}; charset="utf-8"',)
    if not _UNSAFE_7BIT.search(text):
        return Part((*headers, "Content-Transfer-Encoding: 7bit"), text.replace("\n", CRLF))
    data = _utf8(text)
    qp = _qp(data)
    canonical = data.replace(b"\n", b"\r\n")  # base64 carries text in its canonical form
    b64_length = (len(canonical) + 2) // 3 * 4 + (len(canonical) + 56) // 57 * 2
    if len(qp) > b64_length:
        body = _base64_lines(canonical).removesuffix(CRLF)  # that CRLF belongs to the boundary
        return Part((*headers, "Content-Transfer-Encoding: base64"), body)
    return Part((*headers, "Content-Transfer-Encoding: quoted-printable"), qp)


def image_part(content_type: str, data: bytes, cid: str, filename: str) -> Part:
    """An inline image: base64, `Content-ID: <cid>`, `Content-Disposition: inline` with the
    filename. A malformed media type is written application/octet-stream."""
    maintype, _, subtype = content_type.partition("/")
    subtype = subtype or "octet-stream"
    if not (_TOKEN.match(maintype) and _TOKEN.match(subtype)):
        maintype, subtype = "application", "octet-stream"
    if not cid or not all("!" <= c <= "~" and c not in "<>" for c in cid):
        raise ValueError(f"not a usable Content-ID: {cid!r}")
    filename = "".join(c for c in filename if c >= " " and c != "\x7f")
    parameters = _parameter("filename", filename) if filename else []
    return Part(
        (f"Content-Type: {maintype}/{subtype}",
         "Content-Transfer-Encoding: base64",
         _with_parameters("Content-Disposition", "inline", parameters),
         f"Content-ID: <{cid}>"),
        _base64_lines(data).removesuffix(CRLF),
    )


def attachment_part(content_type: str, data: bytes, filename: str) -> Part:
    """A file attached to the message: base64, `Content-Disposition: attachment` with the
    filename (RFC 2231 when it is not short printable ASCII). A malformed media type is written
    application/octet-stream."""
    maintype, _, subtype = content_type.strip().lower().partition("/")
    if not (_TOKEN.match(maintype) and _TOKEN.match(subtype)):
        maintype, subtype = "application", "octet-stream"
    filename = "".join(c for c in filename if c >= " " and c != "\x7f")
    parameters = _parameter("filename", filename) if filename else []
    return Part(
        (f"Content-Type: {maintype}/{subtype}",
         "Content-Transfer-Encoding: base64",
         _with_parameters("Content-Disposition", "attachment", parameters)),
        _base64_lines(data).removesuffix(CRLF),
    )


def multipart(subtype: str, parts: Sequence[Part]) -> Part:
    """A multipart/<subtype> of `parts`, with a random boundary that none of them contains."""
    texts = [part.text() for part in parts]
    while True:
        boundary = "=_" + secrets.token_hex(16)
        if not any(boundary in text for text in texts):
            break
    delimiter = f"--{boundary}"
    body = "".join(f"{delimiter}{CRLF}{text}{CRLF}" for text in texts) + f"{delimiter}--{CRLF}"
    return Part((f"Content-Type: multipart/{subtype};", f' boundary="{boundary}"'), body)


def message(headers: Sequence[str], body: Part) -> bytes:
    """The whole message: our header fields, MIME-Version, the body's own fields, the body."""
    lines = [*headers, "MIME-Version: 1.0", *body.headers]
    return (CRLF.join(lines) + CRLF + CRLF + body.body).encode("utf-8")
