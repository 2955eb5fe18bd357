"""Compose benchmark: our MIME writer (`compose`) against the stdlib `EmailMessage` way, one run.

Usage: python bench/compose.py [--seconds 2.0] [--rounds 5]

Input: command-line options only. The message is a real new-ticket acknowledgement: the built-in
templates rendered by `Renderer` (as mailer.py does) with the preview context, the customer's
message lengthened to a realistic support mail, so the text and HTML parts are about 4 KB each;
the headers are those of an acknowledgement (names with a non-ASCII character, References,
Thread-Index, Auto-Submitted).
Output: on stdout, per round and as medians: compositions per second of the baseline (a private
copy, below, of the `EmailMessage` + `policy=SMTP` composition compose.py used before issue 13)
and of `mailgate.outbound.compose.compose`, and their ratio; the size of each message. Baseline
and ours alternate within each round. The ratio is reported, never enforced.
Trust: a developer tool on a trusted machine; reads the built-in templates, writes nothing.
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import re
import statistics
import time
from collections.abc import Callable
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from pathlib import Path

from mailgate.config import Branding
from mailgate.outbound import thread_index
from mailgate.outbound.compose import (
    MAX_REFERENCES,
    Headers,
    checked_address,
    clean_message_id,
    compose,
    display_name,
)
from mailgate.outbound.render import BUILTIN_DIR, Renderer

ROOT = Path(__file__).resolve().parent.parent
_BASELINE_POLICY = email.policy.SMTP.clone(refold_source="none")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")

AGENT_BODY = (
    "Hello Jane,\n\n"
    "thank you for the detailed description and for everything you already tried. The error "
    "\"13.A2.D2\" after the firmware update is a known problem of version 20240611 on the "
    "LaserJet 4000 series: the update switches the paper path sensor of the duplex unit on, even "
    "on printers that have no duplex unit installed, and the printer then reports a jam that "
    "does not exist.\n\n"
    "You do not need to send the printer in. Please do the following:\n"
    "1. Open the printer's web page (its address is on the network status sheet).\n"
    "2. Under Settings > Paper handling, set \"Duplex unit\" to \"Not installed\".\n"
    "3. Save, switch the printer off, wait ten seconds and switch it on again.\n"
    "4. Print two or three test pages from tray 2 (the 80 g/m² paper is fine).\n\n"
    "If the error comes back, a rollback to the previous firmware is possible as well; I have "
    "attached the instructions to the ticket, and we can also do it together by phone.\n\n"
    "Your contract 4711-0815 covers an on-site visit, so if neither helps before Thursday, "
    "reply to this mail and a technician will come by the next working day.\n\n"
    "Kind regards,\n"
    "Alice"
)


def baseline_compose(subject: str, text: str, html: str, images: tuple,  # type: ignore[type-arg]
                     headers: Headers) -> bytes:
    """compose() as it was before issue 13: stdlib EmailMessage, policy=SMTP, as_bytes()."""

    def mailbox(name: str, address: str) -> HeaderAddress:
        local, _, domain = checked_address(address).rpartition("@")
        return HeaderAddress(display_name=display_name(name), username=local, domain=domain)

    msg = EmailMessage(policy=_BASELINE_POLICY)
    msg["Date"] = email.utils.formatdate(time.time(), localtime=False)
    msg["Message-ID"] = f"<{headers.message_id}>"
    msg["From"] = mailbox(headers.from_name, headers.from_addr)
    msg["To"] = mailbox(headers.to_name, headers.to_addr)
    if headers.cc:
        msg["Cc"] = [mailbox(name, addr) for name, addr in headers.cc]
    msg["Reply-To"] = mailbox(headers.from_name, headers.reply_to)
    msg["Subject"] = _CONTROLS.sub(" ", subject).strip()
    in_reply_to = clean_message_id(headers.in_reply_to)
    if in_reply_to:
        msg.set_raw("In-Reply-To", f"<{in_reply_to}>")
    refs = [r for r in dict.fromkeys(clean_message_id(r) for r in headers.references) if r]
    if in_reply_to:
        refs = [r for r in refs if r != in_reply_to] + [in_reply_to]
    if refs:
        msg.set_raw("References", "\n ".join(f"<{r}>" for r in refs[-MAX_REFERENCES:]))
    if headers.automatic or headers.generated:
        msg["Auto-Submitted"] = "auto-generated" if headers.generated else "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    if headers.thread_index:
        msg["Thread-Index"] = headers.thread_index
        topic = _CONTROLS.sub(" ", headers.thread_topic).strip()
        if topic:
            msg["Thread-Topic"] = topic
    if headers.ticket_id is not None:
        msg["X-Mailgate-Ticket"] = str(headers.ticket_id)
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    if images:
        html_part = msg.get_payload()[1]
        for image in images:
            maintype, _, subtype = image.content_type.partition("/")
            html_part.add_related(image.data, maintype=maintype, subtype=subtype or "octet-stream",
                                  cid=f"<{image.cid}>", filename=image.filename,
                                  disposition="inline")
    return msg.as_bytes()


def message(kind: str, body: str = "") -> tuple[tuple[str, str, str, tuple], Headers]:  # type: ignore[type-arg]
    """The arguments of compose() for one realistic mail of `kind` (an agent's reply: `body`)."""
    renderer = Renderer(BUILTIN_DIR, None, Branding(), {}, ROOT)
    context = renderer.sample_context(kind)
    context["recipient"] = {**context["recipient"], "name": "Jane Doë"}
    if body:
        context["body"] = body
    rendered = renderer.render(kind, context)
    headers = Headers(
        from_name="Example Support", from_addr="support@example.com",
        to_name="Jane Doë", to_addr="jane.doe@customer.example",
        reply_to="support+t1042.c2lnbmVkdG9rZW4@example.com",
        message_id="t1042.1a2b3c4d5e6f.c2lnbmVkdG9rZW4@example.com",
        in_reply_to="CAF=x8Qm+3k@mail.customer.example",
        references=("older.1@mail.customer.example", "CAF=x8Qm+3k@mail.customer.example"),
        automatic=kind == "new_ticket_ack", ticket_id=1042,
        thread_index=thread_index.encode(thread_index.header_block(time.time())),
        thread_topic="Printer on fire <again> & smoking",
    )
    return (rendered.subject, rendered.text, rendered.html, rendered.images), headers


def rate(fn: Callable[..., bytes], args: tuple, headers: Headers,  # type: ignore[type-arg]
         seconds: float) -> float:
    """Compositions per second over about `seconds`."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            fn(*args, headers)
        done += 20
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    cases = {
        "new-ticket acknowledgement": message("new_ticket_ack"),
        "agent reply, 1.3 KB body": message("agent_reply", AGENT_BODY),
    }
    for name, (args, headers) in cases.items():
        subject, text, html, _images = args
        print(f"{name}: subject {len(subject)} chars, text {len(text.encode())} B, "
              f"html {len(html.encode())} B; composed: baseline "
              f"{len(baseline_compose(*args, headers))} B, ours {len(compose(*args, headers))} B")
        base_rates, our_rates = [], []
        for i in range(options.rounds):
            base = rate(baseline_compose, args, headers, options.seconds)
            ours = rate(compose, args, headers, options.seconds)
            base_rates.append(base)
            our_rates.append(ours)
            print(f"  round {i + 1}: baseline {base:8.0f}/s  ours {ours:8.0f}/s  "
                  f"ratio {ours / base:5.1f}x")
        base, ours = statistics.median(base_rates), statistics.median(our_rates)
        print(f"  median: baseline (stdlib EmailMessage) {base:.0f} compositions/s, "
              f"mimewriter {ours:.0f} compositions/s, ratio {ours / base:.1f}x")


if __name__ == "__main__":
    main()
