"""The new part of an incoming reply: quoted history and signatures removed.

Input: the text part of a message and/or its HTML part, exactly as a sender wrote them (hostile and
messy: any mail client, any language, broken markup, lines of thousands of characters). Output:
`reply_text` returns the text the sender added on top of (or between) the quotes of the message
they answer, without the quoted history, the "On <date>, X wrote:" / Outlook "From: ... Sent: ..."
headers that introduce it, and without the "-- " signature or "Sent from my iPhone" line. It is a
pure function (no I/O, no state) and never raises for odd input; it never returns "" for a message
that had content: when stripping would leave nothing, it returns the original text, trimmed.

How: mail-parser-reply's multilingual header expressions find "wrote:" lines; this module adds
what the library lacks — "Original Message" / forward separators, Outlook header blocks in more
languages (and only with a sender field, so "To: ... / Subject: ..." in a customer's own text is
no cut), attributions split over several lines or in languages the library misses (Portuguese,
Russian, Gmail's verb-less formats), ">" quote blocks, bottom-posting and inline answers, mobile
signatures, and for HTML-only mail the quote containers of Gmail, Outlook, Apple Mail,
Thunderbird and Yahoo, dropped with html.parser (reading the bounded, well-formed HTML of
`htmltext.well_formed`) before flattening.

Inline answers: when the sender answered between two or more quoted passages, those passages are
kept (each answer needs its question); a single quoted block before the answer (bottom-posting)
and every quote after the last answer are dropped. A ">" passage inside the sender's own text,
with no attribution above it, stays. A forwarded message below the new text ("---------- Forwarded
message ---------") counts as history too: callers that need it read the full text.

The result is untrusted text like its input: whoever displays it escapes it.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser

from mailparser_reply import EmailReplyParser
from mailparser_reply.parser import EmailMessage

from mailgate.parsing import htmltext

DEFAULT_LANGUAGES: tuple[str, ...] = (
    "en", "de", "fr", "es", "it", "nl", "pt", "sv", "pl", "ja", "da", "cs", "ru", "zh", "ko",
)


@dataclass(frozen=True)
class _Language:
    verbs: tuple[str, ...] = ()  # regex pieces: the verb of "X wrote:"
    from_fields: tuple[str, ...] = ()  # Outlook header names that name the sender
    other_fields: tuple[str, ...] = ()  # other Outlook header names (sent, to, subject, ...)
    separators: tuple[str, ...] = ()  # "Original Message" lines, compared case-insensitively
    mobile: tuple[str, ...] = ()  # regexes for a whole "Sent from my iPhone" line


_LANGUAGES: dict[str, _Language] = {
    "en": _Language(
        verbs=("wrote", "writes"),
        from_fields=("From",),
        other_fields=("Sent", "Date", "To", "Cc", "Bcc", "Subject", "Reply-To"),
        separators=("Original Message", "Original Msg", "Forwarded message",
                    "Begin forwarded message", "Reply message"),
        mobile=(r"Sent from my [\w'.&-]+(?: [\w'.&()-]+){0,4}",
                r"Sent from (?:Outlook|Mail|Yahoo Mail|AOL Mail|Gmail|ProtonMail|Proton Mail)"
                r"(?: (?:for|on) [\w. ]{2,30})?",
                r"Sent (?:via|with) [\w'.&-]+(?: [\w'.&-]+){0,3}",
                r"Get Outlook for (?:iOS|Android|Mac|Windows)(?: ?<[^>]*>)?"),
    ),
    "de": _Language(
        verbs=("schrieb", "schreibt"),
        from_fields=("Von",),
        other_fields=("Gesendet", "An", "Cc", "Betreff", "Datum", "Kopie"),
        separators=("Ursprüngliche Nachricht", "Original-Nachricht", "Originalnachricht",
                    "Weitergeleitete Nachricht", "Anfang der weitergeleiteten Nachricht"),
        mobile=(r"Von meinem [\w'.&-]+(?: [\w'.&-]+){0,4} gesendet",
                r"Gesendet von meinem [\w'.&-]+(?: [\w'.&-]+){0,4}",
                r"Gesendet (?:von|mit) (?:Outlook|Mail|Yahoo Mail)(?: für [\w. ]{2,30})?",
                r"Von (?:Outlook|Mail) für [\w]+ gesendet"),
    ),
    "fr": _Language(
        verbs=("a écrit", "écrit"),
        from_fields=("De", "Expéditeur"),
        other_fields=("Envoyé", "Envoyé le", "Date", "À", "A", "Cc", "Objet", "Destinataire"),
        separators=("Message d'origine", "Message original", "Message transféré",
                    "Début du message réexpédié", "Début du message transféré"),
        mobile=(r"Envoyé (?:de|depuis|à partir de) (?:mon |ma )?[\w'.&-]+(?: [\w'.&-]+){0,4}",
                r"Obtenir Outlook pour (?:iOS|Android)"),
    ),
    "es": _Language(
        verbs=("escribió", "escribio"),
        from_fields=("De", "Remitente"),
        other_fields=("Enviado", "Enviado el", "Fecha", "Para", "CC", "Asunto"),
        separators=("Mensaje original", "Mensaje reenviado", "Inicio del mensaje reenviado"),
        mobile=(r"Enviado desde (?:mi )?[\w'.&-]+(?: [\w'.&-]+){0,4}",
                r"Obtener Outlook para (?:iOS|Android)"),
    ),
    "it": _Language(
        verbs=("ha scritto", "scrive"),
        from_fields=("Da", "Mittente"),
        other_fields=("Inviato", "Inviato il", "Data", "A", "Cc", "Oggetto"),
        separators=("Messaggio originale", "Messaggio inoltrato", "Inizio messaggio inoltrato"),
        mobile=(r"Inviato da(?:l mio)? [\w'.&-]+(?: [\w'.&-]+){0,4}",
                r"Scarica Outlook per (?:iOS|Android)"),
    ),
    "nl": _Language(
        verbs=("schreef", "het volgende geschreven", "geschreven"),
        from_fields=("Van", "Afzender"),
        other_fields=("Verzonden", "Datum", "Aan", "CC", "Onderwerp"),
        separators=("Oorspronkelijk bericht", "Origineel bericht", "Doorgestuurd bericht",
                    "Begin doorgestuurd bericht"),
        mobile=(r"(?:Verzonden|Verstuurd) (?:vanaf|met|van) (?:mijn )?"
                r"[\w'.&-]+(?: [\w'.&-]+){0,4}",),
    ),
    "pt": _Language(
        verbs=("escreveu",),
        from_fields=("De",),
        other_fields=("Enviado", "Enviada", "Enviado em", "Enviada em", "Data", "Para", "Cc",
                      "Assunto"),
        separators=("Mensagem original", "Mensagem encaminhada",
                    "Início da mensagem encaminhada"),
        mobile=(r"Enviado (?:do|de|a partir do|pelo) (?:meu |minha )?[\w'.&-]+(?: [\w'.&-]+){0,4}",
                r"Obter o Outlook para (?:iOS|Android)"),
    ),
    "sv": _Language(
        verbs=("skrev",),
        from_fields=("Från",),
        other_fields=("Skickat", "Datum", "Till", "Kopia", "Ämne"),
        separators=("Ursprungligt meddelande", "Originalmeddelande",
                    "Vidarebefordrat meddelande", "Vidarebefordrat brev"),
        mobile=(r"Skickat från (?:min |mitt )?[\w'.&-]+(?: [\w'.&-]+){0,4}",),
    ),
    "pl": _Language(
        verbs=(r"napisał\(a\)", "napisała", "napisał", "nadesłał"),
        from_fields=("Od",),
        other_fields=("Wysłano", "Data", "Do", "DW", "Temat"),
        separators=("Wiadomość oryginalna", "Oryginalna wiadomość", "Przekazana wiadomość",
                    "Wiadomość przekazana"),
        mobile=(r"Wysłan[oey] z (?:mojego |mojej )?[\w'.&-]+(?: [\w'.&-]+){0,4}",),
    ),
    "ja": _Language(
        verbs=("のメール", "書きました", "書き込みました"),
        from_fields=("差出人", "送信者"),
        other_fields=("送信日時", "日付", "宛先", "件名", "CC"),
        separators=("元のメッセージ", "転送されたメッセージ", "転送メッセージ"),
        mobile=(r"[\w' .&-]{2,30}から送信",),
    ),
    "da": _Language(
        verbs=("skrev",),
        from_fields=("Fra",),
        other_fields=("Sendt", "Dato", "Til", "Cc", "Emne"),
        separators=("Oprindelig meddelelse", "Videresendt meddelelse"),
        mobile=(r"Sendt fra (?:min )?[\w'.&-]+(?: [\w'.&-]+){0,4}",),
    ),
    "cs": _Language(
        verbs=(r"napsal\(a\)", "napsala", "napsal"),
        from_fields=("Od",),
        other_fields=("Odesláno", "Datum", "Komu", "Kopie", "Předmět"),
        separators=("Původní zpráva", "Přeposlaná zpráva"),
        mobile=(r"Odesláno z (?:mého )?[\w'.&-]+(?: [\w'.&-]+){0,4}",),
    ),
    "ru": _Language(
        verbs=(r"написал\(а\)", "написала", "написал", "пишет"),
        from_fields=("От",),
        other_fields=("Отправлено", "Дата", "Кому", "Копия", "Тема"),
        separators=("Исходное сообщение", "Пересылаемое сообщение",
                    "Перенаправленное сообщение"),
        mobile=(r"Отправлено с (?:моего )?[\w'.&-]+(?: [\w'.&-]+){0,4}",),
    ),
    "zh": _Language(
        verbs=("写道", "寫道"),
        from_fields=("发件人", "寄件者", "寄件人"),
        other_fields=("发送时间", "日期", "收件人", "抄送", "主题", "傳送時間", "收件者", "主旨"),
        separators=("原始邮件", "转发的邮件", "原始郵件"),
        mobile=(r"(?:发自|寄自)我的\s?[\w' .&-]{2,30}",),
    ),
    "ko": _Language(
        verbs=("작성",),
        from_fields=("보낸 사람", "보낸사람"),
        other_fields=("보낸 날짜", "받는 사람", "받는사람", "제목", "참조", "날짜"),
        separators=("원본 메시지", "전달된 메시지"),
        mobile=(r"[\w' .&-]{2,30}에서 보냄",),
    ),
}

log = logging.getLogger("mailgate.replytext")

_CJK = {"ja", "zh", "ko"}
_QUOTED = re.compile(r"^[ \t]{0,3}>")
_INVISIBLE = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060\ufeff]")
_DATEISH = re.compile(
    r"\d{1,2}:\d{2}|\b(?:19|20)\d{2}\b|\d{1,4}[./-]\d{1,2}[./-]\d{2,4}|\d{4}年")
# (no "@" in the local part: with one, "<a@a@a@..." without ">" is quadratic)
_ANGLE_ADDRESS = re.compile(r"<[^<>\s@]+@[^<>\s]+>|\[mailto:[^\]\s]+\]|\"[^\"]{1,80}\"")
_RULE_LINE = re.compile(r"^[\s\-_=*~#+.]{3,}$")
_UNDERSCORES = re.compile(r"^\s*_{20,}\s*$")
_SIG_DELIMITER = re.compile(r"^--[ \t]?$")
MAX_HEADER_CHARS = 300  # an attribution or header line longer than this is prose
MAX_LINES = 10_000  # lines read for the new part (a reply's own text is at the top)
MAX_LIBRARY_HEADERS = 40  # lines ending with ":" that mail-parser-reply's expressions read


@dataclass(frozen=True)
class _Patterns:
    library: re.Pattern[str]  # mail-parser-reply's HEADER_REGEX for the languages
    verb: re.Pattern[str]
    verb_only: re.Pattern[str]  # a line that is just "wrote:" (continuation of a header)
    field: re.Pattern[str]
    from_names: frozenset[str]
    separators: frozenset[str]
    mobile: re.Pattern[str]


@lru_cache(maxsize=16)
def _patterns(languages: tuple[str, ...]) -> _Patterns:
    codes = [c.lower().strip() for c in languages]
    codes = list(dict.fromkeys(["en", *codes]))
    known = [c for c in codes if c in _LANGUAGES]
    # the library drops codes it does not know (pt, ru) and always adds English
    lib_codes = EmailReplyParser(languages=list(codes)).languages
    library = EmailMessage(text="", languages=list(lib_codes)).HEADER_REGEX

    word_verbs = [v for c in known if c not in _CJK for v in _LANGUAGES[c].verbs]
    cjk_verbs = [v for c in known if c in _CJK for v in _LANGUAGES[c].verbs]
    verb_parts = [rf"(?<!\w)(?:{'|'.join(word_verbs)})(?!\w)"]
    if cjk_verbs:
        verb_parts.append("|".join(cjk_verbs))
    verb = re.compile("|".join(f"(?:{p})" for p in verb_parts), re.IGNORECASE)
    verb_only = re.compile(rf"^(?:{'|'.join(word_verbs + cjk_verbs)})\s*[:：]$", re.IGNORECASE)

    names = {n for c in known for n in (*_LANGUAGES[c].from_fields, *_LANGUAGES[c].other_fields)}
    alternation = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    field = re.compile(rf"^[*_]{{0,2}}({alternation})[*_]{{0,2}}[ \t]*[:：]", re.IGNORECASE)
    from_names = frozenset(n.casefold() for c in known for n in _LANGUAGES[c].from_fields)
    separators = frozenset(s.casefold() for c in known for s in _LANGUAGES[c].separators)
    mobile = re.compile(
        "|".join(f"(?:{m})" for c in known for m in _LANGUAGES[c].mobile), re.IGNORECASE)
    return _Patterns(library, verb, verb_only, field, from_names, separators, mobile)


def reply_text(text: str, html: str = "", languages: tuple[str, ...] = DEFAULT_LANGUAGES) -> str:
    """The new part of a reply. `text` is the text/plain body; when it is empty or blank, the
    HTML body is read instead (quote containers dropped, then flattened). Never raises: should
    anything here fail, the whole text is the answer (and the failure is logged)."""
    try:
        return _reply_text(text, html, languages)
    except Exception:
        log.warning("%s; the whole text is kept", REPLY_FAILED, exc_info=True)
        return (text or "").strip()


# What the log says when `reply_text` failed (tests and bench/fuzz.py look for it).
REPLY_FAILED = "reply text extraction failed"


def _reply_text(text: str, html: str, languages: tuple[str, ...]) -> str:
    if text and text.strip():
        source = _newlines(text)
        original = source.strip()
    elif html and html.strip():
        source = html_to_text(html)
        original = html_to_text(html, drop_quotes=False)
    else:
        return ""
    if not original:
        return ""
    lines = source.split("\n", MAX_LINES)[:MAX_LINES]  # the new text is at the top
    kept = _strip_history(lines, _patterns(tuple(languages)))
    result = _tidy(kept, _patterns(tuple(languages)))
    return result if result.strip() else original


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _view(line: str) -> str:
    """A line as the header expressions see it: no invisible marks, no nbsp, trimmed."""
    return _INVISIBLE.sub("", line).replace("\xa0", " ").strip()


def _is_quoted(line: str) -> bool:
    return bool(_QUOTED.match(line))


# --- finding the headers, separators and quote blocks -------------------------------------------


@dataclass(frozen=True)
class _Attribution:
    start: int
    end: int  # inclusive
    kind: str  # "strong": a known form, cuts even when no ">" quote follows; "verb": "X wrote:"
    # without a date, dropped when a quote or nothing follows; "weak": a date or address and a
    # colon, dropped only when a quote follows


def _library_attributions(views: list[str], quoted: list[bool], pats: _Patterns
                          ) -> dict[int, _Attribution]:
    """'On ... wrote:' lines that mail-parser-reply knows, as line spans."""
    # Quoted and very long lines can never start a header we act on: blank them for the library,
    # which keeps its expressions fast on pathological input (a line of 30,000 '>'). Every
    # header kept below ends with a colon and spans at most three lines, so the library reads
    # one window at a time: a line ending with a colon and the two lines before it, for the
    # first MAX_LIBRARY_HEADERS such lines. Its expressions take time quadratic in a line's
    # length ("On " + 300 characters + ":" costs milliseconds; 20,000 such lines took minutes).
    masked = ["" if q or len(v) > MAX_HEADER_CHARS else v
              for v, q in zip(views, quoted, strict=True)]
    colons = [i for i, m in enumerate(masked) if m.rstrip().endswith((":", "："))]
    found: dict[int, _Attribution] = {}
    covered = -1  # the last line of the last header found: matches do not overlap
    for end in colons[:MAX_LIBRARY_HEADERS]:
        low = max(0, end - 2, covered + 1)
        window = masked[low:end + 1]
        blob = "\n".join(window)
        starts = list(itertools.accumulate((len(m) + 1 for m in window[:-1]), initial=0))
        for match in pats.library.finditer(blob):
            start = match.start()
            while start < match.end() and blob[start] == "\n":
                start += 1
            chunk = blob[start:match.end()].rstrip()
            if not chunk.endswith((":", "：")) or pats.field.match(chunk):
                continue  # field blocks and separators are judged by this module's own rules
            first = low + bisect.bisect_right(starts, start) - 1
            last = first + chunk.count("\n")
            if len(chunk) <= MAX_HEADER_CHARS and first > covered:
                found[first] = _Attribution(first, last, "strong")
                covered = last
    return found


def _attribution_strength(joined: str, pats: _Patterns) -> str:
    """'strong', 'verb', 'weak' or '' (none) for one (possibly joined) header line."""
    if len(joined) > MAX_HEADER_CHARS or not joined.endswith((":", "：")):
        return ""
    if pats.field.match(joined) and not pats.verb.search(joined):
        return ""  # "Subject:" alone is a field, not an attribution
    dated = bool(_DATEISH.search(joined))
    if pats.verb.search(joined):
        return "strong" if dated or "@" in joined else "verb"
    if dated and _ANGLE_ADDRESS.search(joined):
        return "strong"  # Gmail's verb-less forms: "4 мар. 2024 г. в 10:00, Иван <i@x.ru>:"
    if dated or "@" in joined:
        return "weak"
    return ""


def _continues(prev: str, nxt: str, pats: _Patterns) -> bool:
    """Whether a header line was wrapped between `prev` and `nxt`."""
    if not prev or not nxt:
        return False
    return (prev.endswith(("<", "(", '"', "[")) or nxt.startswith(("<", "[mailto:"))
            or (prev.endswith(",") and bool(_DATEISH.search(prev)))
            or bool(pats.verb_only.match(nxt)))


def _attributions(views: list[str], quoted: list[bool], pats: _Patterns
                  ) -> dict[int, _Attribution]:
    found = _library_attributions(views, quoted, pats)
    n = len(views)
    i = 0
    while i < n:
        if i in found:
            i = found[i].end + 1
            continue
        if quoted[i] or not views[i]:
            i += 1
            continue
        end = i
        while (end + 1 < n and end - i < 2 and not quoted[end + 1] and end + 1 not in found
               and _continues(views[end], views[end + 1], pats)):
            end += 1
        for last in range(end, i - 1, -1):
            strength = _attribution_strength(" ".join(views[i:last + 1]), pats)
            if strength:
                found[i] = _Attribution(i, last, strength)
                break
        i = found[i].end + 1 if i in found else i + 1
    return found


def _field_name(view: str, pats: _Patterns) -> str:
    match = pats.field.match(view)
    return match.group(1).casefold() if match else ""


def _header_block_at(i: int, views: list[str], quoted: list[bool], pats: _Patterns) -> bool:
    """Whether an Outlook-style header block ("From: ... / Sent: ... / To: ...") starts at line
    i: two or more distinct header fields, one of them naming the sender, allowing blank lines
    and one wrapped line between fields."""
    first = _field_name(views[i], pats)
    if not first:
        return False
    names = {first}
    gap = 0
    for j in range(i + 1, min(len(views), i + 16)):
        if quoted[j]:
            break
        name = _field_name(views[j], pats)
        if name:
            names.add(name)
            gap = 0
        elif views[j]:
            gap += 1
            if gap > 1:
                break
    return len(names) >= 2 and bool(names & pats.from_names)


def _is_separator(view: str, pats: _Patterns) -> bool:
    if _UNDERSCORES.match(view):
        return True  # Outlook's reply line, or a mailing list footer
    core = view.strip("-=_*:~ \t").casefold()
    return bool(core) and core in pats.separators and len(view) <= 120


def _strip_history(lines: list[str], pats: _Patterns) -> list[str]:
    n = len(lines)
    views = [_view(line) for line in lines]
    quoted = [_is_quoted(line) for line in lines]
    attributions = _attributions(views, quoted, pats)
    following = [-1] * (n + 1)  # following[j]: the first non-blank line after line j, or -1
    for j in range(n - 1, 0, -1):
        following[j - 1] = j if views[j] else following[j]

    # 1. the first hard boundary: everything from it on is history (or a signature)
    cut = n
    i = 0
    while i < n:
        if quoted[i] or not views[i]:
            i += 1
            continue
        if (_SIG_DELIMITER.match(lines[i]) or _is_separator(views[i], pats)
                or _header_block_at(i, views, quoted, pats)):
            cut = i
            break
        attribution = attributions.get(i)
        if attribution:
            after = following[attribution.end]
            if attribution.kind == "strong" and (after < 0 or not quoted[after]):
                cut = i  # "On ... wrote:" with the quote flattened (no ">")
                break
            i = attribution.end + 1
            continue
        i += 1

    # 2. classify what is left: t(ext), q(uote), a(ttribution), b(lank); an attribution is one
    # when a quote follows it, or (unless it is only a date and a colon) when no text does
    kinds = ["q" if quoted[j] else ("t" if views[j] else "b") for j in range(cut)]
    last_text = max((j for j, k in enumerate(kinds) if k == "t"), default=-1)
    for attribution in sorted(attributions.values(), key=lambda a: -a.start):
        if attribution.start >= cut:
            continue
        after = following[attribution.end]
        trailing = last_text <= attribution.end and attribution.kind != "weak"
        if (0 <= after < cut and quoted[after]) or trailing:
            for j in range(attribution.start, min(attribution.end + 1, cut)):
                kinds[j] = "a"
            while last_text >= 0 and kinds[last_text] != "t":
                last_text -= 1
    if last_text < 0:
        return []
    first_text = kinds.index("t")

    # 3. quote blocks before the last answer: kept for inline answers (two or more blocks), or
    # when the sender quotes something inside their own text (no attribution, text before it);
    # a single introduced block, or one above all the text, is the bottom-posted history
    blocks: list[tuple[int, int, bool]] = []  # first line, last line, kept
    j = 0
    while j < last_text:
        if kinds[j] != "q":
            j += 1
            continue
        first = j
        while j < last_text and kinds[j] in ("q", "b"):
            j += 1
        k = first - 1
        while k >= 0 and kinds[k] == "b":
            k -= 1
        attributed = k >= 0 and kinds[k] == "a"
        blocks.append((first, j - 1, not attributed and first_text < first))
    inline = len(blocks) >= 2
    dropped = {m for first, last, kept in blocks if not (kept or inline)
               for m in range(first, last + 1)}
    return [lines[m] for m in range(last_text + 1)
            if kinds[m] in ("t", "b") or (kinds[m] == "q" and m not in dropped)]


def _tidy(lines: list[str], pats: _Patterns) -> str:
    """Trailing blank lines, rules (----, ____) and mobile signatures go; so do blank runs."""
    out = [line.rstrip() for line in lines]
    while out:
        last = _view(out[-1])
        mobile = (len(last) <= 60 and "," not in last and len(last.split()) <= 7
                  and bool(pats.mobile.fullmatch(last)))
        if not last or _RULE_LINE.match(last) or mobile:
            out.pop()
        else:
            break
    first = next((i for i, line in enumerate(out) if line.strip()), len(out))
    text = "\n".join(out[first:])
    return re.sub(r"\n{4,}", "\n\n\n", text)


# --- HTML ---------------------------------------------------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
         "source", "track", "wbr"}
_SKIP = {"script", "style", "head", "title", "template"}
_BLOCK = {"address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
          "fieldset", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
          "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul"}
# Containers holding the quoted message (or a client's signature): dropped with their content.
_DROP_CLASSES = {"gmail_quote", "gmail_quote_container", "gmail_signature", "moz-cite-prefix",
                 "moz-signature", "yahoo_quoted", "ymail_android_signature", "apple-mail-signature"}
_DROP_IDS = {"olk_src_body_section", "divrplyfwdmsg"}
# Where Outlook's reply header begins: the rest of the document is the quoted message.
_CUT_IDS = {"divrplyfwdmsg", "appendonsend"}


def _unmangle(token: str) -> str:
    """Webmails prefix the classes and ids of forwarded HTML: x_gmail_quote, ecxgmail_quote."""
    token = token.casefold()
    for prefix in ("x_", "ecx"):
        if token.startswith(prefix) and len(token) > len(prefix) + 3:
            token = token[len(prefix):]
    return token


class _QuoteDroppingText(HTMLParser):
    """Flattens HTML to text, skipping quote containers, with HTML whitespace rules."""

    def __init__(self, drop_quotes: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.drop_quotes = drop_quotes
        self.parts: list[str] = []
        self._skip = 0
        self._drop_tag = ""
        self._drop_depth = 0
        self._pre = 0
        self.cut = False

    def _newline(self) -> None:
        if self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.cut:
            return
        if self._drop_depth:
            if tag == self._drop_tag and tag not in _VOID:
                self._drop_depth += 1
            return
        if tag in _SKIP:
            self._skip += 1
            return
        values = dict(attrs) if self.drop_quotes else {}
        classes = {_unmangle(c) for c in (values.get("class") or "").split()}
        ident = _unmangle((values.get("id") or "").strip())
        if ident in _CUT_IDS:
            self.cut = True
            return
        quote = tag == "blockquote" and self.drop_quotes
        if quote or classes & _DROP_CLASSES or ident in _DROP_IDS:
            if tag not in _VOID:
                self._drop_tag, self._drop_depth = tag, 1
            self._newline()
            return
        if tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK:
            self._newline()
            if tag == "pre":
                self._pre += 1
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            self.handle_starttag(tag, attrs)
        else:  # <div/>: opens and closes at once
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.cut:
            return
        if self._drop_depth:
            if tag == self._drop_tag:
                self._drop_depth -= 1
            return
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK:
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
            self._newline()

    def handle_data(self, data: str) -> None:
        if self.cut or self._skip or self._drop_depth:
            return
        if not self._pre:
            data = re.sub(r"[ \t\r\n\f\xa0]+", " ", data)
            if self.parts and self.parts[-1].endswith((" ", "\n")):
                data = data.lstrip(" ")
        self.parts.append(data)


def html_to_text(html: str, drop_quotes: bool = True) -> str:
    """Readable text of an HTML body. With `drop_quotes`, its quote containers (blockquote,
    gmail_quote, moz-cite-prefix, OLK_SRC_BODY_SECTION, ...) are left out and everything from
    Outlook's divRplyFwdMsg on is cut; the text rules of `reply_text` then remove the rest."""
    parser = _QuoteDroppingText(drop_quotes)
    try:  # html.parser only ever reads nh3's well-formed output (linear; see htmltext)
        parser.feed(htmltext.well_formed(html))
        parser.close()
    except Exception:  # html.parser is lenient; never let markup stop ingestion
        return " ".join(re.sub(r"<[^<>]*>", " ", htmltext.bound(html)).split())
    text = "".join(parser.parts)
    lines = [line.rstrip(" ") for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
