"""The template renderer: the built-in templates (package data), override directories,
branding, escaping of untrusted values, subjects, the logo, and one-line errors naming the file
and line. Real template files in tmp_path; no mocks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mailgate.config import TEMPLATE_KINDS, Branding, TemplateSettings
from mailgate.outbound.render import (
    BUILTIN_DIR,
    LOGO_CID,
    InlineImage,
    Renderer,
    TemplateError,
)

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ROOT / "mailgate" / "builtin" / "templates"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5f1c1b00000000049454e44ae426082"
)

BRANDING = Branding(
    company_name="Acme Widgets",
    header="Thanks for contacting Acme",
    footer="Acme Widgets Ltd · 1 Road · Springfield",
    signature="Your Acme support team",
    primary_color="#ff5500",
)
SCRIPT = "<script>alert(1)</script>"


def renderer(
    tmp_path: Path,
    *,
    override: Path | None = None,
    branding: Branding = BRANDING,
    settings: dict[str, TemplateSettings] | None = None,
) -> Renderer:
    return Renderer(BUILTIN, override, branding, settings or {}, tmp_path)


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def hostile_context(r: Renderer, kind: str) -> dict[str, Any]:
    ctx = r.sample_context(kind)
    ctx["ticket"] = {**ctx["ticket"], "subject": f"Help {SCRIPT}\r\nBcc: x@y"}
    ctx["customer_message"] = {
        "subject": f"Help {SCRIPT}", "text": f"line one\n{SCRIPT}", "from": f"Eve {SCRIPT}",
    }
    ctx["body"] = f"Hello\n{SCRIPT}\n<b>bold</b>"
    ctx["recipient"] = {"name": f"Eve {SCRIPT}", "email": "eve@customer.example"}
    return ctx


def test_builtin_dir_is_the_packages_templates() -> None:
    assert BUILTIN_DIR == BUILTIN
    for kind in (*TEMPLATE_KINDS, "base"):
        assert (BUILTIN / f"{kind}.html").is_file()
        assert (BUILTIN / f"{kind}.txt").is_file()


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_branding_appears_in_both_parts(tmp_path: Path, kind: str) -> None:
    r = renderer(tmp_path)
    out = r.render(kind, r.sample_context(kind))
    assert out.kind == kind
    for part in (out.text, out.html):
        for value in ("Acme Widgets", "Thanks for contacting Acme", "Your Acme support team",
                      "Acme Widgets Ltd · 1 Road · Springfield", "Powered by mailgate"):
            assert value in part, (value, part)
    assert "#ff5500" in out.html
    assert out.html.lstrip().startswith("<!DOCTYPE html>")
    assert 'name="viewport"' in out.html
    assert not re.search(r"<(p|br|td|table|div)\b", out.text)  # plain text, no markup
    assert out.text.endswith("\n") and "\n\n\n" not in out.text
    assert out.images == ()


def test_branding_is_escaped_in_html_and_powered_by_can_be_hidden(tmp_path: Path) -> None:
    branding = Branding(company_name="A & B <Co>", signature="Line 1\nLine 2",
                        footer='"quoted"', primary_color="red;background:url(x)",
                        show_powered_by=False)
    r = renderer(tmp_path, branding=branding)
    out = r.render("agent_reply", r.sample_context("agent_reply"))
    assert "A &amp; B &lt;Co&gt;" in out.html and "<Co>" not in out.html
    assert "Line 1<br>\nLine 2" in out.html
    assert "&#34;quoted&#34;" in out.html
    assert "url(x)" not in out.html  # not a plain CSS colour: the default is used
    assert "#2563eb" in out.html
    assert "A & B <Co>" in out.text and "Line 1\nLine 2" in out.text
    assert "Powered by mailgate" not in out.text + out.html


def test_new_ticket_ack_text(tmp_path: Path) -> None:
    r = renderer(tmp_path)
    ctx = r.sample_context("new_ticket_ack")
    ctx["ticket"]["id"] = 123
    out = r.render("new_ticket_ack", ctx)
    assert "We received your request #123" in out.text
    assert "reply to this mail" in out.text
    assert ctx["ticket"]["reply_address"] in out.text
    assert out.subject == "[#123] Re: Printer on fire <again> & smoking"


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_untrusted_values_are_escaped_in_html_not_in_text(tmp_path: Path, kind: str) -> None:
    r = renderer(tmp_path)
    out = r.render(kind, hostile_context(r, kind))
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html
    assert SCRIPT in out.text  # text/plain: shown as written
    assert "\n" not in out.subject and "\r" not in out.subject
    assert "Bcc: x@y" in out.subject  # harmless once it is on the same line
    assert re.fullmatch(r"\[#1042\] [^\r\n]+", out.subject)


def test_agent_body_keeps_its_lines_in_html_after_escaping(tmp_path: Path) -> None:
    r = renderer(tmp_path)
    out = r.render("agent_reply", hostile_context(r, "agent_reply"))
    assert (
        "Hello<br>\n&lt;script&gt;alert(1)&lt;/script&gt;<br>\n&lt;b&gt;bold&lt;/b&gt;" in out.html
    )
    assert f"Hello\n{SCRIPT}\n<b>bold</b>" in out.text


def test_assignee_notification_shows_the_customer_message_or_none(tmp_path: Path) -> None:
    r = renderer(tmp_path)
    ctx = r.sample_context("assignee_notification")
    out = r.render("assignee_notification", ctx)
    assert "assigned to you" in out.text and "started smoking again" in out.text
    assert out.subject == "[#1042] Assigned to you: Printer on fire <again> & smoking"
    out = r.render("assignee_notification", {**ctx, "customer_message": None})
    assert "started smoking" not in out.text + out.html and "#1042" in out.text


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: My printer", "[#7] Re: My printer"),
        ("RE: My printer", "[#7] RE: My printer"),
        ("aw: Drucker", "[#7] aw: Drucker"),
        ("Sv: Skrivare", "[#7] Sv: Skrivare"),
        ("Re: Re: RE: loop", "[#7] RE: loop"),
        ("Ready: the printer", "[#7] Re: Ready: the printer"),
        ("Store: closed", "[#7] Re: Store: closed"),
        ("  tabs\tand\x00nul\x1b and\u2028separators ", "[#7] Re: tabs and nul and separators"),
    ],
)
def test_default_subject_has_one_reply_prefix_and_one_line(
    tmp_path: Path, subject: str, expected: str
) -> None:
    r = renderer(tmp_path)
    ctx = r.sample_context("agent_reply")
    ctx["ticket"] = {**ctx["ticket"], "id": 7, "subject": subject}
    assert r.render("agent_reply", ctx).subject == expected


def test_subject_is_cut_to_250_characters(tmp_path: Path) -> None:
    r = renderer(tmp_path)
    ctx = r.sample_context("agent_reply")
    ctx["ticket"] = {**ctx["ticket"], "subject": "x" * 1000 + "\n" + "y" * 1000}
    subject = r.render("agent_reply", ctx).subject
    assert len(subject) == 250 and subject.startswith("[#1042] Re: xxx")


def test_subject_from_settings(tmp_path: Path) -> None:
    settings = {"new_ticket_ack": TemplateSettings(
        subject="{{ branding.company_name }} got it: {{ ticket.subject }} <#{{ ticket.id }}>")}
    r = renderer(tmp_path, settings=settings)
    ctx = r.sample_context("new_ticket_ack")
    ctx["ticket"] = {**ctx["ticket"], "subject": "A & B\r\nBcc: x@y"}
    out = r.render("new_ticket_ack", ctx)
    assert out.subject == "Acme Widgets got it: A & B Bcc: x@y <#1042>"  # not HTML-escaped
    assert r.kinds()[0]["subject"] == settings["new_ticket_ack"].subject


def test_subject_setting_errors_name_the_key(tmp_path: Path) -> None:
    r = renderer(tmp_path, settings={"agent_reply": TemplateSettings(subject="{{ ticket.id }")})
    with pytest.raises(TemplateError, match=r"^\[templates\.agent_reply\] subject: "):
        r.render("agent_reply", r.sample_context("agent_reply"))
    r = renderer(tmp_path, settings={"agent_reply": TemplateSettings(subject="{{ tikcet.id }}")})
    with pytest.raises(TemplateError) as info:
        r.render("agent_reply", r.sample_context("agent_reply"))
    assert str(info.value) == (
        "[templates.agent_reply] subject: UndefinedError: 'tikcet' is undefined")


def test_enabled_follows_settings(tmp_path: Path) -> None:
    r = renderer(tmp_path, settings={"new_ticket_ack": TemplateSettings(enabled=False)})
    assert r.enabled("new_ticket_ack") is False
    assert r.enabled("agent_reply") is True
    assert r.enabled("premium_ack") is True
    assert [k["enabled"] for k in r.kinds()] == [False, True, True, True, True]


def test_override_dir_wins_over_builtin(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    html = write(override, "agent_reply.html",
                 '{% extends "base.html" %}{% block content %}CUSTOM {{ body | nl2br }}'
                 "{% endblock %}")
    r = renderer(tmp_path, override=override)
    out = r.render("agent_reply", r.sample_context("agent_reply"))
    assert "CUSTOM Hi Jane,<br>" in out.html
    assert "Your Acme support team" in out.html  # still the built-in layout around it
    assert "CUSTOM" not in out.text  # the text part still comes from the built-in directory
    entry = next(k for k in r.kinds() if k["kind"] == "agent_reply")
    assert entry["html_source"] == str(html.resolve())
    assert entry["text_source"] == str(BUILTIN / "agent_reply.txt")


def test_override_base_layout_applies_to_builtin_kinds(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    write(override, "base.txt", "MY LAYOUT\n{% block content %}{% endblock %}\n"
          "{{ branding.signature }}\n")
    r = renderer(tmp_path, override=override)
    out = r.render("new_ticket_ack", r.sample_context("new_ticket_ack"))
    assert out.text.startswith("MY LAYOUT\n")
    assert "We received your request #1042" in out.text


def test_kinds_lists_builtin_kinds_and_extra_kinds(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    write(override, "premium_ack.html",
          '{% extends "base.html" %}{% block content %}VIP #{{ ticket.id }}{% endblock %}')
    write(override, "premium_ack.txt",
          '{% extends "base.txt" %}{% block content %}VIP #{{ ticket.id }}{% endblock %}')
    write(override, "half_done.html", "only the html part")
    write(override, "_partial.html", "a partial")
    write(override, "_partial.txt", "a partial")
    r = renderer(tmp_path, override=override)
    kinds = r.kinds()
    assert [k["kind"] for k in kinds] == [*TEMPLATE_KINDS, "premium_ack"]
    premium = kinds[-1]
    assert premium == {
        "kind": "premium_ack",
        "enabled": True,
        "html_source": str((override / "premium_ack.html").resolve()),
        "text_source": str((override / "premium_ack.txt").resolve()),
        "subject": "[#{{ ticket.id }}] Re: {{ ticket.subject }}",
    }
    for entry in kinds[:3]:
        assert entry["html_source"] == str(BUILTIN / f"{entry['kind']}.html")
        assert Path(entry["text_source"]).is_absolute()
    out = r.render("premium_ack", r.sample_context("premium_ack"))
    assert "VIP #1042" in out.text and "VIP #1042" in out.html
    assert out.subject.startswith("[#1042] Re: ")


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    path = write(override, "new_ticket_ack.txt",
                 '{% extends "base.txt" %}\n{% block content %}\nHello\n'
                 "{% if ticket.id %}\n{% endblock %}\n")
    r = renderer(tmp_path, override=override)
    with pytest.raises(TemplateError) as info:
        r.render("new_ticket_ack", r.sample_context("new_ticket_ack"))
    message = str(info.value)
    assert message.startswith(f"{path.resolve()}:5: ")
    assert "endblock" in message and "\n" not in message


def test_syntax_error_in_an_override_layout_names_the_layout(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    path = write(override, "base.html", "<html>\n{{ branding.company_name }\n</html>\n")
    r = renderer(tmp_path, override=override)
    with pytest.raises(TemplateError, match=rf"^{re.escape(str(path.resolve()))}:2: "):
        r.render("agent_reply", r.sample_context("agent_reply"))


def test_undefined_variable_names_file_and_line(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    path = write(override, "agent_reply.html",
                 '{% extends "base.html" %}\n{% block content %}\n<p>Hi</p>\n'
                 "{{ ticket.id }} {{ agnet.name }}\n{% endblock %}\n")
    r = renderer(tmp_path, override=override)
    with pytest.raises(TemplateError) as info:
        r.render("agent_reply", r.sample_context("agent_reply"))
    assert str(info.value) == f"{path.resolve()}:4: UndefinedError: 'agnet' is undefined"


def test_runtime_error_in_an_included_template_names_that_template(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    write(override, "agent_reply.txt",
          '{% extends "base.txt" %}\n{% block content %}\n{% include "_part.txt" %}\n'
          "{% endblock %}\n")
    part = write(override, "_part.txt", "one\ntwo {{ ticket.id // 0 }}\n")
    r = renderer(tmp_path, override=override)
    with pytest.raises(TemplateError) as info:
        r.render("agent_reply", r.sample_context("agent_reply"))
    assert str(info.value).startswith(f"{part.resolve()}:2: ZeroDivisionError: ")


def test_templates_are_sandboxed(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    path = write(override, "agent_reply.txt",
                 '{% extends "base.txt" %}\n{% block content %}\n'
                 "{{ body.__class__.__mro__ }}\n{% endblock %}\n")
    r = renderer(tmp_path, override=override)
    with pytest.raises(TemplateError, match=rf"^{re.escape(str(path.resolve()))}:3: Security"):
        r.render("agent_reply", r.sample_context("agent_reply"))


def test_unknown_kind(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    override.mkdir()
    r = renderer(tmp_path, override=override)
    for kind in ("no_such_kind", "../config/templates/base", "base"):
        with pytest.raises(TemplateError) as info:
            r.render(kind, r.sample_context(kind))
        message = str(info.value)
        assert message.startswith(f"no template for kind {kind!r} in ")
        assert str(override.resolve()) in message and str(BUILTIN) in message


def test_logo_file_is_sent_inline(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "logo.png").write_bytes(PNG)
    r = renderer(tmp_path, branding=Branding(company_name="Acme", logo="img/logo.png"))
    out = r.render("new_ticket_ack", r.sample_context("new_ticket_ack"))
    assert out.images == (InlineImage(LOGO_CID, "image/png", PNG, "logo.png"),)
    assert f'src="cid:{LOGO_CID}"' in out.html
    assert LOGO_CID == "logo@mailgate"


def test_logo_url_is_an_img_src(tmp_path: Path) -> None:
    url = "https://cdn.example.com/logo.png?v=1&size=2"
    r = renderer(tmp_path, branding=Branding(company_name="Acme", logo=url))
    out = r.render("agent_reply", r.sample_context("agent_reply"))
    assert out.images == ()
    assert '<img src="https://cdn.example.com/logo.png?v=1&amp;size=2"' in out.html


def test_missing_logo_file_is_a_template_error(tmp_path: Path) -> None:
    r = renderer(tmp_path, branding=Branding(logo="nowhere/logo.png"))
    with pytest.raises(TemplateError) as info:
        r.render("agent_reply", r.sample_context("agent_reply"))
    message = str(info.value)
    assert message.startswith("[branding] logo: ")
    assert str((tmp_path / "nowhere" / "logo.png").resolve()) in message
    assert r.check() and all(p.startswith("[branding] logo: ") for p in r.check())


def test_logo_that_is_not_an_image_is_a_template_error(tmp_path: Path) -> None:
    (tmp_path / "logo.txt").write_text("not an image")
    r = renderer(tmp_path, branding=Branding(logo="logo.txt"))
    with pytest.raises(TemplateError, match=r"^\[branding\] logo: .*logo\.txt"):
        r.render("agent_reply", r.sample_context("agent_reply"))


def test_sample_context_renders_every_kind(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    write(override, "premium_ack.html",
          '{% extends "base.html" %}{% block content %}{{ ticket.subject }} '
          "{{ agent.name }} {{ body | nl2br }}{% endblock %}")
    write(override, "premium_ack.txt",
          '{% extends "base.txt" %}{% block content %}{{ ticket.subject }}{% endblock %}')
    r = renderer(tmp_path, override=override)
    for entry in r.kinds():
        out = r.render(entry["kind"], r.sample_context(entry["kind"]))
        assert out.subject and out.text.strip() and out.html.strip()
        assert "#1042" in out.subject + out.text + out.html
    assert r.check() == []


def test_check_reports_every_broken_kind(tmp_path: Path) -> None:
    override = tmp_path / "custom"
    write(override, "agent_reply.html", "{% if %}")
    write(override, "new_ticket_ack.txt", "{{ nope }}")
    r = renderer(tmp_path, override=override)
    problems = r.check()
    assert len(problems) == 2
    assert problems[0].startswith(str((override / "new_ticket_ack.txt").resolve()) + ":1: ")
    assert problems[1].startswith(str((override / "agent_reply.html").resolve()) + ":1: ")
