"""Bounds on the work a hostile message can cause, applied before any parser reads it.

Input: the raw bytes of a message exactly as received — hostile: any size, any structure, any
header. Output: `bound(raw)` returns a `Bounded`: the bytes the parsers are given, and a defect
line for each cut. The standard library's email parser (which mail-parser uses too) and its
header helpers are slow or recursive on some input, so what they are given is bounded first:

- a header field longer than `MAX_FIELD_BYTES` keeps its first `MAX_FIELD_BYTES` (as Postfix's
  `header_size_limit` does); more than `MAX_HEADER_FIELDS` fields or `MAX_HEADER_BYTES` in one
  header block: the rest of the fields are dropped;
- a Content-Type or Content-Disposition keeps only as many parameters as `PARAM_SCAN_BUDGET`
  allows for its length (the stdlib reads parameter lists in time quadratic in their length),
  an address field its first `MAX_ADDRESS_ITEMS` items;
- an encoded word or RFC 2231 parameter naming a charset the parsers would decode slowly or
  fail on (punycode, idna, undefined, ...) is read as us-ascii;
- a header whose encoded words never close (`=?cs?q?...` without `?=`), which the stdlib decodes
  in quadratic time, is cut before the first of them once that cost passes `WORD_SCAN_BUDGET`;
- a leaf body longer than `SET_ASIDE_BYTES` (base64, quoted-printable or unencoded) is set aside:
  the parsers see a short marker in its place, and `payload_bytes(part, bounded)` decodes the
  body straight from the raw message (the stdlib parser holds several copies of every body it
  reads, about seven times its size in all: a 20 MB attachment cost 150 MB);
- MIME parts nested deeper than `MAX_MIME_DEPTH`, parts after the first `MAX_MIME_PARTS`, a
  multipart's epilogue holding parts of its own, and bodies once their lines × the boundaries
  around them pass `MAX_BOUNDARY_CHECKS` are cut out (the stdlib parser recurses per level and
  tests every line against every enclosing boundary).

The message structure is read the way `email.feedparser` reads it (the same header-line rule,
the same boundary expressions, digest defaults), so the bytes outside the cuts mean the same to
the parsers. The caller always keeps the raw message itself; only what the parsers see is
bounded. `unfold(text)` is the linear replacement for `re.sub(r"\\s*\\r?\\n\\s*", " ", text)`.
Everything here runs in time linear in its input and never raises for any bytes.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.parser
import email.utils
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message

MAX_FIELD_BYTES = 64 * 1024
MAX_HEADER_FIELDS = 1000
MAX_HEADER_BYTES = 1024 * 1024
MAX_ADDRESS_ITEMS = 2000  # separators ("," ";") in one address field
PARAM_SCAN_BUDGET = 200_000  # parameters × the length of their Content-* field
WORD_SCAN_BUDGET = 10_000  # encoded words left open × the text after them, per field
MAX_MIME_DEPTH = 50
MAX_MIME_PARTS = 1000
MAX_EPILOGUE_PARTS = 8  # boundary lines an epilogue may hold before it is cut
MAX_BOUNDARY_CHECKS = 10_000_000  # body lines × the boundaries enclosing them, in all
SET_ASIDE_BYTES = 1024 * 1024  # a leaf body longer than this is decoded from the raw bytes
_SET_ASIDE_CTES = ("base64", "quoted-printable", "7bit", "8bit", "binary", "")

_EOL = re.compile(rb"\r\n|\r|\n")
_DASH_LINE = re.compile(rb"(?:\r\n|\r|\n)--")
# email.feedparser.headerRE: what a header line looks like (field, continuation, Unix From).
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_PARAM_FIELDS = (b"content-type", b"content-disposition")
# Fields read as address lists (mail-parser's and ours): each item costs the parsers some tens
# of microseconds, so a field of 60,000 ";" took seconds.
_ADDRESS_FIELDS = (b"from", b"to", b"cc", b"bcc", b"reply-to", b"sender", b"delivered-to")
# The charset of an encoded word (RFC 2047) and of an extended parameter (RFC 2231).
_CHARSET_IN_WORD = re.compile(rb"(=\?)([^?\s]{1,64})(\?[qQbB]\?)")
_CHARSET_IN_PARAM = re.compile(rb"(\*=[ \t]*\"?)([^'\"\s;=]{1,64})(')")


@dataclass(frozen=True)
class Bounded:
    raw: bytes  # what parsers may read: the message with the cuts below applied
    defects: tuple[str, ...] = ()
    header_end: int = -1  # where the top-level body starts in `raw` (-1: not known)
    source: bytes = b""  # the message as received, when bodies were set aside
    # the bodies set aside: marker (what the part decodes to) → (start, stop, encoding) in source
    aside: dict[bytes, tuple[int, int, str]] = field(default_factory=dict)

    @property
    def header(self) -> bytes:
        """The top-level header block (with the blank line after it, when there is one)."""
        return self.raw if self.header_end < 0 else self.raw[:self.header_end]

    def body(self, decoded: bytes) -> bytes:
        """The real body of a part whose decoded payload is `decoded` (a marker when the body
        was set aside, then decoded here from the raw message); `decoded` itself otherwise."""
        where = self.aside.get(decoded) if self.aside and decoded.startswith(_MARKER) else None
        if where is None:
            return decoded
        start, stop, cte = where
        view = memoryview(self.source)[start:stop]
        try:
            if cte == "base64":
                return binascii.a2b_base64(view)
            if cte == "quoted-printable":
                return binascii.a2b_qp(view)
        except (binascii.Error, ValueError):
            return b""
        return bytes(view)

    def restore(self, data: bytes) -> bytes:
        """`data` (a nested message as a parser wrote it back) with set-aside bodies put back."""
        for marker, (start, stop, cte) in self.aside.items():
            data = data.replace(_encoded_marker(marker, cte), self.source[start:stop])
        return data


_MARKER = b"mailgate-set-aside-"


def _encoded_marker(marker: bytes, cte: str) -> bytes:
    return base64.b64encode(marker) if cte == "base64" else marker


# Codecs that are no text charset of mail, or that decode in more than linear time (punycode,
# idna) or always fail (undefined): a part declaring one is read as UTF-8, with a defect.
_REFUSED_CODECS = frozenset({"punycode", "idna", "undefined", "unicode-escape",
                             "raw-unicode-escape", "unicode-internal"})
_CHARSET_ALIASES = {"unknown-8bit": "latin-1", "x-unknown": "latin-1",
                    "iso-8859-8-i": "iso-8859-8", "gb2312": "gb18030", "gbk": "gb18030",
                    "ks_c_5601-1987": "cp949"}


def content_type(part: Message) -> str:
    """`part.get_content_type()`, or its default type when the header cannot be read."""
    try:
        return str(part.get_content_type())
    except Exception:
        try:
            return str(part.get_default_type())
        except Exception:
            return "text/plain"


def content_charset(part: Message) -> str | None:
    """`part.get_content_charset()`, or None when the parameter cannot be read."""
    try:
        charset = part.get_content_charset()
    except Exception:
        return None
    return charset if isinstance(charset, str) else None


def payload_bytes(part: Message, bounded: Bounded | None = None) -> bytes:
    """A leaf part's body with its transfer encoding undone; b"" for a multipart or when that
    fails (the raw message keeps it). Pass the `Bounded` the part was parsed from to get a
    body that was set aside. Never `get_payload()` without decode on a leaf: with 8-bit bytes
    it decodes them with the part's charset, whatever codec that names."""
    try:
        data = part.get_payload(decode=True)
    except Exception:
        return b""
    if not isinstance(data, bytes):
        return b""
    return bounded.body(data) if bounded is not None else data


# An RFC 2047 encoded word as a unit: no white space or "?" inside its text.
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_HIDDEN = re.compile("\ue000(\\d+)\ue001")


def address_pairs(values: list[str]) -> list[tuple[str, str]]:
    """(display name, address) pairs of address header values, read from their structure with
    every encoded word held as one atom: what an encoded word says (`=0D=0A`, `Bcc:`, `<`, `@`)
    can never end a display name or make an address. The names keep their encoded words (the
    caller decodes them); an encoded word where an address should be stays undecoded, so it is
    no address. Never raises: unreadable values give no pairs."""
    words: list[str] = []

    def hide(m: re.Match[str]) -> str:
        words.append(m.group(0))
        return f"\ue000{len(words) - 1}\ue001"

    def show(text: str) -> str:
        return _HIDDEN.sub(lambda m: words[int(m.group(1))], text)

    hidden = [v if "\ue000" in v else _ENCODED_WORD.sub(hide, v) for v in values]
    try:
        pairs = email.utils.getaddresses(hidden)
    except Exception:  # the stdlib recurses on nested comments and groups
        return []
    return [(show(name), show(addr)) for name, addr in pairs]


def text_codec(charset: object) -> str | None:
    """The Python codec for a MIME charset name, or None when it names no usable text codec."""
    name = str(charset or "us-ascii").strip().strip('"').strip().lower()
    name = _CHARSET_ALIASES.get(name, name)
    if not name or len(name) > 64 or not name.isascii():
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return None
    return info.name


def decode_text(data: bytes, charset: object) -> tuple[str, str]:
    """`data` decoded as the MIME `charset` says, and a defect line ("" when none): an unknown
    or refused charset reads as UTF-8; bytes the charset does not allow become U+FFFD. Never
    raises; linear in the length of `data`."""
    codec = text_codec(charset)
    problem = ""
    if codec is None:
        problem, codec = f"unknown charset {str(charset)[:64]!r}", "utf-8"
    try:
        return data.decode(codec), problem
    except UnicodeDecodeError:
        if codec == "ascii":
            try:
                return data.decode("utf-8"), problem  # undeclared 8-bit text is most often UTF-8
            except UnicodeDecodeError:
                pass
    except Exception:  # a codec that fails otherwise (stateful, broken): as UTF-8
        codec = "utf-8"
    problem = problem or f"bytes not valid in charset {codec}"
    try:
        return data.decode(codec, errors="replace"), problem
    except Exception:
        return data.decode("utf-8", errors="replace"), problem


def unfold(text: str) -> str:
    """Every run of white space that holds a line break → one space, in linear time."""
    if "\n" not in text:
        return text
    lines = text.split("\n")
    middle = [s for s in (line.strip() for line in lines[1:-1]) if s]
    return " ".join([lines[0].rstrip(), *middle, lines[-1].lstrip()])


def encoded_word_cut(value: str | bytes) -> tuple[int, int]:
    """(cost, offset): what decoding `value`'s RFC 2047 words costs the standard library (the
    encoded words left open × the text after them, per line and over the unfolded value), and
    where to cut so that none is left open (-1: nothing to cut)."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if b"=?" not in data:
        return 0, -1
    worst, cut = 0, -1
    pos = 0
    for m in [*_EOL.finditer(data), None]:
        end = m.start() if m else len(data)
        cost, at = _open_words(data, pos, end)
        if cost > worst:
            worst, cut = cost, at
        pos = m.end() if m else len(data)
    unfolded = data.replace(b"\r", b"").replace(b"\n", b"")
    if len(unfolded) != len(data):
        cost, at = _open_words(unfolded, 0, len(unfolded))
        if cost > worst:  # map the offset back: the first open word of the unfolded text
            worst, cut = cost, _nth_opener(data, unfolded.count(b"=?", 0, at))
    return worst, cut


def _open_words(data: bytes, start: int, end: int) -> tuple[int, int]:
    last_close = data.rfind(b"?=", start, end)
    tail = start if last_close < 0 else last_close + 2
    first = data.find(b"=?", tail, end)
    if first < 0:
        return 0, -1
    return data.count(b"=?", first, end) * (end - first), first


def _safe_charset(m: re.Match[bytes]) -> bytes:
    """An encoded word's or parameter's charset, or us-ascii for one of _REFUSED_CODECS
    (mail-parser and the stdlib would decode with it: slowly, or failing with UnicodeError)."""
    name = m.group(2).decode("ascii", "replace").split("*", 1)[0]  # RFC 2231 language suffix
    try:
        refused = codecs.lookup(name.strip().lower()).name in _REFUSED_CODECS
    except (LookupError, ValueError, TypeError):
        refused = False
    return m.group(1) + b"us-ascii" + m.group(3) if refused else m.group(0)


def _param_cut(field: bytes) -> int:
    """Where to cut a Content-Type/Disposition field so that its parameters × its length stay
    within `PARAM_SCAN_BUDGET` (-1: no cut): the stdlib splits parameter lists quadratically."""
    if field.count(b";") * len(field) <= PARAM_SCAN_BUDGET:
        return -1
    at, k = -1, 0
    while True:
        at = field.find(b";", at + 1)
        if at < 0:
            return -1
        k += 1
        if k * at > PARAM_SCAN_BUDGET:
            return at


def _nth_separator(field: bytes, most: int) -> int:
    """Where the (`most`+1)-th address separator ("," or ";") of `field` is; -1 if none."""
    if field.count(b",") + field.count(b";") <= most:
        return -1
    seen = 0
    for i, byte in enumerate(field):
        if byte in (0x2C, 0x3B):
            seen += 1
            if seen > most:
                return i
    return -1


def _nth_opener(data: bytes, n: int) -> int:
    pos = -1
    for _ in range(n + 1):
        pos = data.find(b"=?", pos + 1)
        if pos < 0:
            return -1
    return pos


def _printable(name: bytes) -> str:
    text = name.decode("ascii", "replace")[:40]
    return "".join(c if c.isprintable() else "?" for c in text)


class _Scan:
    """One pass over a message, reading its structure as email.feedparser does."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.n = len(raw)
        self.cuts: list[tuple[int, int, bytes]] = []  # (start, end, replacement)
        self.nonce = secrets.token_hex(8).encode()
        self.aside: dict[bytes, tuple[int, int, str]] = {}
        self.defects: list[str] = []
        # The false-EOF matchers of the enclosing multiparts, by their boundary without
        # trailing blanks (a line can only match the ones its own text names) ...
        self.boundaries: list[tuple[str, Callable[[str], object]]] = []
        self.by_key: dict[str, list[Callable[[str], object]]] = {}
        self.blank_ends = 0  # ... and how many "a blank line ends it" matchers are active
        self.checks = 0  # lines × enclosing boundaries the stdlib parser will test
        self.too_costly = 0
        self.header_end = -1  # where the top-level body starts
        self.parts = 0
        self.too_deep = 0
        self.too_many = 0

    # --- lines, as BufferedSubFile.readline gives them --------------------------------------

    def _end(self, pos: int) -> int:
        m = _EOL.search(self.raw, pos)
        return m.end() if m else self.n

    def _is_eof(self, start: int, end: int) -> bool:
        raw = self.raw
        if self.blank_ends and raw[start:start + 1] in (b"\r", b"\n"):
            return True
        if self.boundaries and raw.startswith(b"--", start):
            line = raw[start:end].decode("ascii", "surrogateescape")
            core = line[2:].rstrip("\r\n").rstrip(" \t")
            keys = (core, core[:-2].rstrip(" \t")) if core.endswith("--") else (core,)
            return any(match(line) for key in keys for match in self.by_key.get(key, ()))
        return False

    def _push(self, boundary: str, match: Callable[[str], object]) -> None:
        key = boundary.rstrip(" \t")
        self.boundaries.append((key, match))
        self.by_key.setdefault(key, []).append(match)

    def _pop(self) -> None:
        key, _ = self.boundaries.pop()
        self.by_key[key].pop()
        if not self.by_key[key]:
            del self.by_key[key]

    def _readline(self, pos: int) -> int | None:
        """The end of the line at `pos`, or None at the end of input or a false EOF."""
        if pos >= self.n:
            return None
        end = self._end(pos)
        return None if self._is_eof(pos, end) else end

    def _skip(self, pos: int) -> int:
        """The position of the next false EOF (or the end): a leaf body's extent."""
        raw, n = self.raw, self.n
        if not self.boundaries and not self.blank_ends:
            return n
        if self.blank_ends:  # inside message/delivery-status: blank lines end parts
            while pos < n:
                end = self._end(pos)
                if self._is_eof(pos, end):
                    return pos
                pos = end
            return n
        while pos < n:
            if raw.startswith(b"--", pos):
                end = self._end(pos)
                if self._is_eof(pos, end):
                    return pos
                pos = end
                continue
            m = _DASH_LINE.search(raw, pos)
            if m is None:
                return n
            pos = m.end() - 2
        return n

    # --- headers ------------------------------------------------------------------------------

    def _header_block(self, pos: int) -> tuple[int, Message]:
        """Reads (and bounds) the header block at `pos`; returns the body's start and the
        headers as the parser will see them."""
        raw = self.raw
        fields: list[list[int]] = []  # [start, end] of each field (continuations joined)
        while True:
            end = self._readline(pos)
            if end is None:
                break
            head = _HEADER_LINE.match(raw, pos)
            if head is None or head.end() > end:
                if raw[pos:pos + 1] in (b"\r", b"\n"):
                    pos = end  # the blank line between header and body
                break
            if raw[pos:pos + 1] in (b" ", b"\t") and fields:
                fields[-1][1] = end
            else:
                fields.append([pos, end])
            pos = end
        kept: list[bytes] = []
        total = 0
        dropped = 0
        for i, (start, end) in enumerate(fields):
            if i >= MAX_HEADER_FIELDS or total >= MAX_HEADER_BYTES:
                dropped += 1
                self.cuts.append((start, end, b""))
                continue
            field = self._bound_field(raw[start:end], start, end)
            total += len(field)
            kept.append(field)
        if dropped:
            self.defects.append(f"more than {MAX_HEADER_FIELDS} header fields or"
                                f" {MAX_HEADER_BYTES} bytes of headers: {dropped} fields dropped")
        try:
            headers = email.parser.BytesParser().parsebytes(b"".join(kept) + b"\n",
                                                            headersonly=True)
        except Exception:  # the header parser is lenient; an empty header if not
            headers = Message()
        return pos, headers

    def _bound_field(self, field: bytes, start: int, end: int) -> bytes:
        colon = field.find(b":")
        name = field[:colon].strip().lower() if colon >= 0 else b""
        keep = len(field)
        why = []
        if keep > MAX_FIELD_BYTES:
            keep = MAX_FIELD_BYTES
            why.append(f"longer than {MAX_FIELD_BYTES} bytes ({len(field)})")
        if name in _PARAM_FIELDS:
            at = _param_cut(field[:keep])
            if at >= 0:
                keep = at
                why.append("too many parameters for its length")
        if name in _ADDRESS_FIELDS:
            at = _nth_separator(field[:keep], MAX_ADDRESS_ITEMS)
            if at >= 0:
                keep = at
                why.append(f"more than {MAX_ADDRESS_ITEMS} addresses")
        cost, at = encoded_word_cut(field[:keep])
        if cost > WORD_SCAN_BUDGET and at >= 0:
            keep = min(keep, at)
            why.append("encoded words that never end")
        if keep < len(field) and (colon < 0 or keep <= colon):
            # the cut would leave no field name: drop the field whole
            self.defects.append(f"header {_printable(name)}: {', '.join(why)}; dropped")
            self.cuts.append((start, end, b""))
            return b""
        bounded = field
        if keep < len(field):
            eol = next((e for e in (b"\r\n", b"\n", b"\r") if field.endswith(e)), b"")
            bounded = field[:keep].rstrip(b"\r\n") + eol
        if b"=?" in bounded or b"*=" in bounded:
            renamed = _CHARSET_IN_WORD.sub(_safe_charset, bounded)
            renamed = _CHARSET_IN_PARAM.sub(_safe_charset, renamed)
            if renamed != bounded:
                bounded = renamed
                why.append("a charset no parser may use (read as us-ascii)")
        if bounded == field:
            return field
        self.defects.append(f"header {_printable(name)}: {', '.join(why)}; cut for parsing")
        self.cuts.append((start, end, bounded))
        return bounded

    # --- the MIME tree ------------------------------------------------------------------------

    def message(self, pos: int, depth: int, default_type: str = "text/plain") -> int:
        """Reads one message (headers and body) at `pos`, nested `depth` levels deep; returns
        the position where it ends (a false EOF, or the end of input)."""
        pos, headers = self._header_block(pos)
        if depth == 0 and self.header_end < 0:
            self.header_end = pos
        try:
            headers.set_default_type(default_type)
            ctype = headers.get_content_type()
        except Exception:
            ctype = default_type
        if ctype == "message/delivery-status":
            return self._delivery_status(pos, depth)
        if ctype.startswith("message/"):
            return self._child(pos, depth + 1, "text/plain")
        if ctype.startswith("multipart/"):
            try:
                boundary = headers.get_boundary()
            except Exception:
                boundary = None
            if boundary is not None:
                return self._multipart(pos, depth, boundary, ctype == "multipart/digest")
        return self._body(pos, _transfer_encoding(headers))

    def _body(self, pos: int, cte: str | None = None) -> int:
        """A leaf body (up to the next false EOF): set aside when long (see the module
        docstring); cut out once the lines × enclosing boundaries the stdlib parser would test
        pass `MAX_BOUNDARY_CHECKS`."""
        end = self._skip(pos)
        if end - pos > SET_ASIDE_BYTES and cte in _SET_ASIDE_CTES:
            self._set_aside(pos, end, cte)
            return end
        if self.boundaries:
            lines = max(self.raw.count(b"\n", pos, end), self.raw.count(b"\r", pos, end))
            self.checks += lines * len(self.boundaries)
            if self.checks > MAX_BOUNDARY_CHECKS:
                self.too_costly += 1
                self.cuts.append((pos, end, b""))
        return end

    def _set_aside(self, pos: int, end: int, cte: str) -> None:
        """Replaces the body at pos..end by a marker that the part's transfer encoding decodes
        to; the line end before a boundary belongs to the boundary (as in email.feedparser)."""
        stop = end
        if self.boundaries or self.blank_ends:
            tail = self.raw[max(pos, end - 2):end]
            stop -= 2 if tail == b"\r\n" else 1 if tail[-1:] in (b"\r", b"\n") else 0
        marker = _MARKER + self.nonce + b"-" + str(len(self.aside)).encode()
        self.aside[marker] = (pos, stop, cte)
        self.cuts.append((pos, stop, _encoded_marker(marker, cte)))

    def _child(self, pos: int, depth: int, default_type: str) -> int:
        """A nested message: read, or cut out when too deep or past the part limit."""
        if depth > MAX_MIME_DEPTH:
            self.too_deep += 1
            end = self._skip(pos)
            self.cuts.append((pos, end, b""))
            return end
        return self.message(pos, depth, default_type)

    def _delivery_status(self, pos: int, depth: int) -> int:
        while True:
            self.blank_ends += 1
            try:
                pos = self._child(pos, depth + 1, "text/plain")
            finally:
                self.blank_ends -= 1
            end = self._readline(pos)  # the blank line after the block
            if end is None:
                return pos
            pos = end
            if self._readline(pos) is None:
                return pos

    def _multipart(self, pos: int, depth: int, boundary: str, digest: bool) -> int:
        separator = "--" + boundary
        boundary_re = re.compile("(?P<sep>" + re.escape(separator)
                                 + r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$")
        raw = self.raw
        preamble = True
        while True:
            end = self._readline(pos)
            if end is None:
                return pos
            line = raw[pos:end]
            mo = boundary_re.match(line.decode("ascii", "surrogateescape")) \
                if line.startswith(b"--") else None
            if mo is None:  # preamble text
                pos = end
                continue
            if mo.group("end"):
                return self._epilogue(end, depth)
            if preamble:
                preamble = False
            pos = end
            while True:  # repeated boundary lines make no empty parts
                nxt = self._readline(pos)
                if nxt is None or not (raw.startswith(b"--", pos) and boundary_re.match(
                        raw[pos:nxt].decode("ascii", "surrogateescape"))):
                    break
                pos = nxt
            self._push(boundary, boundary_re.match)
            try:
                self.parts += 1
                if self.parts > MAX_MIME_PARTS:
                    self.too_many += 1
                    stop = self._skip(pos)
                    self.cuts.append((pos, stop, b""))
                    pos = stop
                else:
                    pos = self._child(pos, depth + 1,
                                      "message/rfc822" if digest else "text/plain")
            finally:
                self._pop()

    def _epilogue(self, pos: int, depth: int) -> int:
        """After a closing boundary: text up to the next false EOF. mail-parser parses an
        epilogue that holds parts of its own: one holding many is cut out."""
        end = self._skip(pos)
        region = self.raw[pos:end]
        lines = region.count(b"\n--") + region.count(b"\r--") + region.startswith(b"--")
        nested = region.lower().count(b"multipart/") + region.lower().count(b"message/")
        if lines > MAX_EPILOGUE_PARTS or nested > MAX_EPILOGUE_PARTS:
            self.cuts.append((pos, end, b""))
            self.defects.append("a multipart epilogue holding MIME parts; cut for parsing")
        return end


def _transfer_encoding(headers: Message) -> str | None:
    try:
        return str(headers.get("content-transfer-encoding", "")).strip().lower()
    except Exception:
        return None


def bound(raw: bytes) -> Bounded:
    """The message as the parsers may read it: see the module docstring. Never raises."""
    try:
        scan = _Scan(raw)
        scan.message(0, 0)
    except Exception as exc:  # a bug here must not cost a message: parse it unbounded
        return Bounded(raw, (f"bounds not applied: {type(exc).__name__}: {exc}"[:200],))
    header_end = scan.header_end
    if scan.too_deep:
        scan.defects.append(f"MIME parts nested deeper than {MAX_MIME_DEPTH} levels:"
                            f" {scan.too_deep} not parsed (kept in the raw message)")
    if scan.too_costly:
        scan.defects.append(f"{scan.too_costly} MIME bodies under many nested boundaries not"
                            " parsed (kept in the raw message)")
    if scan.too_many:
        scan.defects.append(f"more than {MAX_MIME_PARTS} MIME parts: {scan.too_many} not"
                            " parsed (kept in the raw message)")
    if not scan.cuts:
        return Bounded(raw, tuple(scan.defects), header_end)
    out, pos, shift = [], 0, 0
    for start, end, replacement in sorted(scan.cuts):
        if start < pos:  # never overlapping; be safe all the same
            continue
        out += [raw[pos:start], replacement]
        if end <= scan.header_end:
            shift += end - start - len(replacement)
        pos = end
    out.append(raw[pos:])
    return Bounded(b"".join(out), tuple(scan.defects), header_end - shift,
                   raw if scan.aside else b"", scan.aside)
