"""Rendering outgoing mail from jinja2 templates: one kind + a context → subject, text and HTML.

Input: a template kind (``new_ticket_ack``, ``agent_reply``, the notifications to agents
``assignee_notification``, ``customer_replied_notification`` and ``team_notification``, or an
extra kind an administrator added) and a context whose values come from customer mail and agents —
untrusted text. The templates themselves (``<kind>.html`` / ``<kind>.txt`` extending
``base.html`` / ``base.txt``, searched in ``[templates] dir`` first, then the built-in
``builtin/templates``), the ``[branding]`` section and ``[templates.<kind>] subject`` are written
by an administrator: trusted to mean what they say, not trusted to be free of mistakes, and run in
jinja2's sandbox with ``StrictUndefined`` so a typo is an error rather than a blank.

Canned replies (template kind ``canned``) are ``canned/<name>.txt`` in the same directories:
plain text rendered with the ticket's context to fill an agent's reply, not mail of their own.

Output: a `Rendered` (one-line subject, plain text, HTML, inline images such as the logo). HTML
templates autoescape every variable (branding included); the text part is not HTML-escaped; the
subject has every control character collapsed to a space and is cut to 250 characters, so nothing
from mail can inject a header. Every failure is a `TemplateError` whose message is one line
naming the file and line (or the config key) at fault.
"""

from __future__ import annotations

import mimetypes
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape

from mailgate import builtin
from mailgate.config import NOTIFICATION_KINDS, TEMPLATE_KINDS, Branding, TemplateSettings
from mailgate.errors import PermanentFailure

# The built-in templates: package data (mailgate/builtin/templates), wherever mailgate is installed.
BUILTIN_DIR = builtin.templates_dir()

LOGO_CID = "logo@mailgate"
CANNED_KIND = "canned"  # canned replies: text that fills an agent's reply, never mail alone
CANNED_DIR = "canned"  # canned/<name>.txt in the template directories
MAX_SUBJECT = 250
DEFAULT_COLOR = "#2563eb"

DEFAULT_SUBJECTS = {
    "new_ticket_ack": "[#{{ ticket.id }}] Re: {{ ticket.subject }}",
    "agent_reply": "[#{{ ticket.id }}] Re: {{ ticket.subject }}",
    "assignee_notification": "[#{{ ticket.id }}] Assigned to you: {{ ticket.subject }}",
    "customer_replied_notification":
        "[#{{ ticket.id }}] Customer replied: {{ ticket.subject }}",
    "team_notification": "[#{{ ticket.id }}] New for team {{ team }}: {{ ticket.subject }}",
}
# Kinds not listed above (extra kinds an administrator added) answer in the ticket's thread.
FALLBACK_SUBJECT = "[#{{ ticket.id }}] Re: {{ ticket.subject }}"

_KIND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_NOT_KINDS = {"base"}  # layouts, not mail; names starting with "_" are partials
_CSS_COLOR = re.compile(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}|[a-zA-Z]{3,20}")
# Reply prefixes ("Re:", "RE:", "Aw:", "Sv:", "Re[2]:") at the start of the subject or right
# after its "[#id]" tag: two or more in a row keep only the last (the ticket subject's own one).
_REPLY_PREFIX = r"(?:re|aw|sv)(?:\[\d+\])?[ \t]*:[ \t]*"
_REPEATED_REPLY_PREFIX = re.compile(rf"(^|\][ \t]*)((?:{_REPLY_PREFIX}){{2,}})", re.IGNORECASE)
_ONE_REPLY_PREFIX = re.compile(_REPLY_PREFIX, re.IGNORECASE)
_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}


class TemplateError(PermanentFailure):
    """A template, a subject setting or the logo is unusable; the message is one line that
    names the file and line (``<file>:<line>: <what>``) or the config key at fault."""


@dataclass(frozen=True)
class InlineImage:
    cid: str  # without angle brackets; the HTML refers to it as "cid:<cid>"
    content_type: str
    data: bytes
    filename: str


@dataclass(frozen=True)
class Rendered:
    kind: str
    subject: str  # one line, at most 250 characters
    text: str
    html: str
    images: tuple[InlineImage, ...]


def nl2br(value: Any) -> Markup:
    """Escape (unless already Markup), then turn each line break into ``<br>``."""
    escaped = escape("" if value is None else value)
    lines = re.split(r"\r\n|\r|\n", str(escaped))
    return Markup("<br>\n".join(lines))


def css_color(value: Any) -> str:
    """The colour if it is a plain CSS colour (#rgb, #rrggbb, a name), else the default:
    a colour lands inside a style attribute, where escaping alone does not stop CSS."""
    text = str(value or "")
    return text if _CSS_COLOR.fullmatch(text) else DEFAULT_COLOR


def one_line(value: str, limit: int = MAX_SUBJECT) -> str:
    """Control characters (CR, LF, tab, ...), line separators and runs of white space → one
    space; stripped; at most `limit` characters. What is left is safe as a header value."""
    chars = [
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c.isspace() else c
        for c in value
    ]
    text = re.sub(r" {2,}", " ", "".join(chars)).strip()
    return text[:limit].rstrip()


def _last_prefix(match: re.Match[str]) -> str:
    last = _ONE_REPLY_PREFIX.findall(match.group(2))[-1]
    return f"{match.group(1)}{last.strip()} "


def clean_subject(value: str) -> str:
    """One line, without a doubled reply prefix ("[#1] Re: Re: x" → "[#1] Re: x")."""
    return one_line(_REPEATED_REPLY_PREFIX.sub(_last_prefix, one_line(value, 10 * MAX_SUBJECT)))


def _clean_body(value: str) -> str:
    """Line ends → LF (the composer writes CRLF); control characters other than tab and LF,
    which mail from outside may carry and which have no place in a body, dropped."""
    value = re.sub(r"\r\n?", "\n", value)
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", value)


def _template_frame(tb: TracebackType | None, dirs: list[Path]) -> tuple[str, int] | None:
    """The deepest traceback frame that is a template line. jinja2 rewrites the frames of
    compiled templates so their filename is the template file and their line its line."""
    prefixes = tuple(f"{d}{os.sep}" for d in dirs)
    found = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(prefixes):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _one_line_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or repr(exc)
    return " ".join(s for s in (line.strip() for line in str(message).split("\n")) if s)


class Renderer:
    def __init__(
        self,
        builtin_dir: Path,
        override_dir: Path | None,
        branding: Branding,
        settings: Mapping[str, TemplateSettings],
        base_dir: Path,
    ) -> None:
        self.builtin_dir = Path(builtin_dir).resolve()
        self.override_dir = Path(override_dir).resolve() if override_dir is not None else None
        self.branding = branding
        self.settings = dict(settings)
        self.base_dir = Path(base_dir)
        self.dirs = [d for d in (self.override_dir, self.builtin_dir) if d is not None]
        self._logo: tuple[str, tuple[InlineImage, ...]] | None = None
        self._subjects: dict[str, Template] = {}  # subject source → compiled template

        common: dict[str, Any] = {"undefined": StrictUndefined, "auto_reload": True}
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader([str(d) for d in self.dirs]),
            autoescape=lambda name: name is not None and name.endswith((".html", ".htm")),
            trim_blocks=True,
            lstrip_blocks=True,
            **common,
        )
        # Subjects are one line of plain text: never HTML-escaped.
        self.subject_env = ImmutableSandboxedEnvironment(autoescape=False, **common)
        for env in (self.env, self.subject_env):
            env.filters["nl2br"] = nl2br
            env.filters["css_color"] = css_color
            env.filters["one_line"] = one_line

    # -- what exists ---------------------------------------------------------------------------

    def _source(self, name: str) -> Path | None:
        """The file the loader uses for `name`: the override directory first, then built-in."""
        for d in self.dirs:
            path = d / name
            if path.is_file():
                return path
        return None

    def subject_source(self, kind: str) -> str:
        custom = self.settings.get(kind, TemplateSettings()).subject
        if custom is not None:
            return custom
        return DEFAULT_SUBJECTS.get(kind, FALLBACK_SUBJECT)

    def kinds(self) -> list[dict[str, Any]]:
        """Every kind with both ``<kind>.html`` and ``<kind>.txt`` (in either directory): the
        built-in kinds always come first (with None for a file that is missing), then extra
        kinds alphabetically. Paths are the absolute files a render would use."""
        extra: set[str] = set()
        for d in self.dirs:
            if d.is_dir():
                for path in d.glob("*.html"):
                    kind = path.stem
                    if (
                        kind not in TEMPLATE_KINDS
                        and kind not in _NOT_KINDS
                        and _KIND_NAME.fullmatch(kind)
                        and self._source(f"{kind}.txt") is not None
                    ):
                        extra.add(kind)
        result = []
        for kind in [*TEMPLATE_KINDS, *sorted(extra)]:
            html, text = self._source(f"{kind}.html"), self._source(f"{kind}.txt")
            result.append({
                "kind": kind,
                "enabled": self.enabled(kind),
                "html_source": str(html) if html else None,
                "text_source": str(text) if text else None,
                "subject": self.subject_source(kind),
            })
        return result

    def enabled(self, kind: str) -> bool:
        return self.settings.get(kind, TemplateSettings()).enabled

    # -- canned replies ------------------------------------------------------------------------

    def canned_names(self) -> list[str]:
        """The canned replies: `canned/<name>.txt` in either directory (one of the override
        directory hides the built-in one of that name), sorted by name."""
        names: set[str] = set()
        for d in self.dirs:
            folder = d / CANNED_DIR
            if folder.is_dir():
                names.update(p.stem for p in folder.glob("*.txt")
                             if _KIND_NAME.fullmatch(p.stem) and p.is_file())
        return sorted(names)

    def render_canned(self, name: str, context: Mapping[str, Any]) -> str:
        """A canned reply's text (template kind `canned`): plain text that fills an agent's
        reply, rendered with the ticket's context (``ticket``, ``customer``, ``agent``) and
        ``branding``. TemplateError (one line) when there is no such reply or it fails."""
        if not _KIND_NAME.fullmatch(name) or name not in self.canned_names():
            known = ", ".join(self.canned_names()) or "none"
            raise TemplateError(f"no canned reply {name!r} (canned/<name>.txt in"
                                f" {self._dirs_text()}; there are: {known})")
        try:
            template = self.env.get_template(f"{CANNED_DIR}/{name}.txt")
        except TemplateSyntaxError as exc:
            raise self._syntax_error(exc) from None
        text = _clean_body(self._run(template, {**context, "branding": self.branding,
                                                "kind": CANNED_KIND}))
        text = "\n".join(line.rstrip(" \t") if line != "-- " else line
                         for line in text.split("\n"))
        return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"

    # -- rendering -----------------------------------------------------------------------------

    def render(self, kind: str, context: Mapping[str, Any]) -> Rendered:
        """Render one kind. The renderer adds ``branding``, ``logo_src`` (an http(s) URL, or
        ``cid:logo@mailgate``, or "") and ``kind`` to the caller's context."""
        html_t, text_t = self._templates(kind)
        logo_src, images = self._load_logo()
        ctx = {**context, "branding": self.branding, "logo_src": logo_src, "kind": kind}
        html = _clean_body(self._run(html_t, ctx))
        text = _clean_body(self._run(text_t, ctx))
        # Trailing blanks off every line but the "-- " signature separator (line by line: the
        # pattern "^(.*?)[ \t]+$" was quadratic in a run of blanks — 20,000 spaces took 3 s).
        text = "\n".join(line if line == "-- " else line.rstrip(" \t")
                         for line in text.split("\n"))
        text = re.sub(r"\n{3,}", "\n\n", text)
        subject = self._subject(kind, ctx)
        return Rendered(kind, subject, text.strip("\n") + "\n", html.strip() + "\n", images)

    def _templates(self, kind: str) -> tuple[Template, Template]:
        if not _KIND_NAME.fullmatch(kind) or kind in _NOT_KINDS:
            raise TemplateError(f"no template for kind {kind!r} in {self._dirs_text()}")
        found = []
        for ext in ("html", "txt"):
            name = f"{kind}.{ext}"
            try:
                found.append(self.env.get_template(name))
            except TemplateNotFound:
                raise TemplateError(
                    f"no template for kind {kind!r} in {self._dirs_text()} (missing {name})"
                ) from None
            except TemplateSyntaxError as exc:
                raise self._syntax_error(exc) from None
        return found[0], found[1]

    def _run(self, template: Template, ctx: Mapping[str, Any]) -> str:
        try:
            return template.render(ctx)
        except TemplateSyntaxError as exc:  # in a template pulled in by extends/include
            raise self._syntax_error(exc) from None
        except TemplateNotFound as exc:  # extends/include of a missing file
            where = _template_frame(exc.__traceback__, self.dirs) or (template.filename, 0)
            raise TemplateError(
                f"{where[0]}:{where[1]}: template not found: {exc.name} "
                f"(searched {self._dirs_text()})"
            ) from None
        except Exception as exc:  # what a template can raise is open-ended
            where = _template_frame(exc.__traceback__, self.dirs) or (template.filename, 0)
            raise TemplateError(
                f"{where[0]}:{where[1]}: {type(exc).__name__}: {_one_line_message(exc)}"
            ) from None

    def _subject(self, kind: str, ctx: Mapping[str, Any]) -> str:
        where = f"[templates.{kind}] subject"
        source = self.subject_source(kind)
        try:
            template = self._subjects.get(source)
            if template is None:
                template = self._subjects[source] = self.subject_env.from_string(source)
            subject = template.render(ctx)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{where}: {_one_line_message(exc)} (line {exc.lineno})") from None
        except Exception as exc:
            raise TemplateError(
                f"{where}: {type(exc).__name__}: {_one_line_message(exc)}"
            ) from None
        return clean_subject(subject)

    def _syntax_error(self, exc: TemplateSyntaxError) -> TemplateError:
        filename = exc.filename or exc.name or "<template>"
        return TemplateError(f"{filename}:{exc.lineno}: {_one_line_message(exc)}")

    def _dirs_text(self) -> str:
        return ", ".join(str(d) for d in self.dirs)

    # -- the logo ------------------------------------------------------------------------------

    def _load_logo(self) -> tuple[str, tuple[InlineImage, ...]]:
        """("", ()) without a logo; (URL, ()) for an http(s) logo; ("cid:...", (image,)) for a
        file, read once and kept (a reload builds a new Renderer)."""
        logo = self.branding.logo.strip()
        if not logo:
            return "", ()
        if logo.lower().startswith(("http://", "https://")):
            return logo, ()
        if self._logo is not None:
            return self._logo
        path = Path(logo).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        path = path.resolve()
        content_type = _IMAGE_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        if not content_type or not content_type.startswith("image/"):
            raise TemplateError(
                f"[branding] logo: {path}: not an image file name "
                f"(expected one of {', '.join(_IMAGE_TYPES)}) or an http(s) URL"
            )
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TemplateError(f"[branding] logo: file not found: {path}") from None
        except OSError as exc:
            raise TemplateError(
                f"[branding] logo: cannot read {path}: {exc.strerror or exc}"
            ) from None
        self._logo = (f"cid:{LOGO_CID}", (InlineImage(LOGO_CID, content_type, data, path.name),))
        return self._logo

    # -- previews and checks -------------------------------------------------------------------

    def sample_context(self, kind: str) -> dict[str, Any]:
        """Realistic sample data for previewing `kind` (every key any built-in kind uses, so an
        extra kind written like the built-in ones renders too)."""
        ticket = {
            "id": 1042,
            "subject": "Printer on fire <again> & smoking",
            "status": "open",
            "requester": "jane.doe@customer.example",
            "requester_name": "Jane Doe",
            "reply_address": "support+t1042.sample@example.com",
            "status_label": "open",
            "assignee": None,
            "team": "billing",
            "agent_reply_address": "support+a1042-sample@example.com",
        }
        customer_message = {
            "subject": ticket["subject"],
            "text": (
                "Hello,\n\nthe office printer (HP LaserJet 4000) started smoking again this "
                "morning.\nIt still prints, but the smell is <strong>awful</strong>.\n\n"
                "Thanks,\nJane"
            ),
            "from": "Jane Doe <jane.doe@customer.example>",
        }
        agent = {"name": "Alice Agent", "email": "alice@example.com"}
        customer = {"name": "Jane Doe", "email": "jane.doe@customer.example"}
        return {
            "ticket": ticket,
            "customer_message": customer_message,
            "agent": agent,
            "body": (
                "Hi Jane,\n\nplease unplug the printer and keep the window open. A technician "
                "will come by tomorrow between 9 and 11.\n\nBest regards,\nAlice"
            ),
            "recipient": agent if kind in NOTIFICATION_KINDS else customer,
            "team": "billing",
            "branding": self.branding,
        }

    def check(self) -> list[str]:
        """Render every kind with its sample context: the one-line error of each that fails
        (for ``check-config`` and start-up), an empty list when all render."""
        problems = []
        for entry in self.kinds():
            try:
                self.render(entry["kind"], self.sample_context(entry["kind"]))
            except TemplateError as exc:
                problems.append(str(exc))
        return problems
