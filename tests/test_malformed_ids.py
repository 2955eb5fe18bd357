"""A customer's malformed Message-ID never breaks our mail (issue 17): folded, without angle
brackets, with control characters, or long as Outlook makes them — the acknowledgement and an
agent's reply still compose and go out, with In-Reply-To and References that are one clean
`<id>` each, never RFC 2047-encoded. On a running daemon with a relay stub."""

from __future__ import annotations

import re

import pytest
from conftest import Daemon, queue_id_of, send
from relay_stub import RelayStub

OUTLOOK = "DB9PR10MB5713A3F0A9D1C2B3E4F5A6B7C8D9E0F1A2B3@DB9PR10MB5713.EURPRD10.PROD.OUTLOOK.COM"
CASES = {
    # the Message-ID header as sent → the id our threading headers may carry (None: left out)
    "folded inside brackets": ("<fold\r\n\tinside@customer.test>", "foldinside@customer.test"),
    "folded, no brackets": ("fold\r\n\tbare@customer.test", "foldbare@customer.test"),
    "no brackets": ("nobrackets@customer.test", "nobrackets@customer.test"),
    "control characters": ("<ctl\x01\x7fid@customer.test>", "ctlid@customer.test"),
    "long (Outlook)": (f"<{OUTLOOK}>", OUTLOOK),
    "not an id at all": ("<no id here>", None),
}
ID_LINE = re.compile(rb"^(In-Reply-To:|References:)? ?<[!-;=?-~]+>$")


def threading_lines(data: bytes) -> list[bytes]:
    """The In-Reply-To and References lines (with their continuation lines) of a mail."""
    lines, keep = [], False
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if keep:
                lines.append(line)
            continue
        keep = line.startswith((b"In-Reply-To:", b"References:"))
        if keep:
            lines.append(line)
    return lines


def check_sane(data: bytes, expected: str | None) -> None:
    head = data.split(b"\r\n\r\n")[0]
    assert head.isascii() and not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", head)
    lines = threading_lines(data)
    for line in lines:
        assert ID_LINE.match(line), line
    in_reply_to = [x for x in lines if x.startswith(b"In-Reply-To:")]
    if expected is None:
        assert in_reply_to == []
    else:
        assert in_reply_to == [f"In-Reply-To: <{expected}>".encode()]


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_message_id_never_breaks_the_ack_or_a_reply(out_daemon, relay: RelayStub,
                                                               case: str) -> None:
    header, expected = CASES[case]
    d: Daemon = out_daemon()
    data = (f"From: Jane <jane@customer.test>\r\nTo: support@example.com\r\nSubject: {case}\r\n"
            f"Message-ID: {header}\r\nReferences: <older@customer.test>\r\n"
            f" <bad\x02ref@customer.test>\r\n\r\nHelp.\r\n").encode("latin-1")
    row = d.audit_for(queue_id_of(send(d.port, data)[1]))
    assert row["action"] == "created_ticket", row
    ack = relay.wait_for(1, timeout=15)[0]
    check_sane(ack.data, expected)
    d.cli("tickets", "reply", str(row["ticket_id"]), "--agent", "alice@example.com",
          "--body", "On it.")
    reply = relay.wait_for(2, timeout=15)[1]
    check_sane(reply.data, expected)
    assert b"On it." in reply.data
