"""CLI mistakes print one line and exit non-zero; listings agree with their --json."""

from __future__ import annotations

import time

from conftest import Daemon, send


def test_user_mistakes_are_one_line(daemon: Daemon) -> None:
    out = daemon.cli("tickets", "show", "999", expect=1)
    assert out.strip() == "mailgate: no ticket #999"
    out = daemon.cli("spool", "retry", "NOSUCHID", expect=1)
    assert out.strip() == "mailgate: no spool entry NOSUCHID"
    out = daemon.cli("tickets", "list", "--status", "bogus", expect=1)  # a usage error too
    assert out.startswith("mailgate: Invalid value for '--status'") and out.count("\n") == 1


def test_listings_and_stats(daemon: Daemon) -> None:
    for i in range(3):
        send(daemon.port, f"From: l{i}@client.test\r\nSubject: list {i}\r\n"
                          f"Message-ID: <l{i}@client.test>\r\n\r\nbody\r\n")
    deadline = time.monotonic() + 30  # a message deferred under load is taken again soon
    while (stats := daemon.wait_idle())["tickets"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stats["tickets"] == 3 and stats["messages"] == 3, (stats, daemon.log()[-3000:])
    assert stats["incoming_by_action"] == {"created_ticket": 3}
    assert stats["spool"]["done"] == 3
    table = daemon.cli("tickets", "list")
    assert table.splitlines()[0].split() == ["ID", "SUBJECT", "REQUESTER", "ORGANIZATION",
                                             "STATUS", "PRIORITY", "TEAM", "ASSIGNEE",
                                             "CREATED_AT", "UPDATED_AT"]
    assert len(table.splitlines()) == 4
    assert [t["subject"] for t in daemon.json("tickets", "list", "--limit", "2")] == [
        "list 2", "list 1"]
    assert daemon.json("tickets", "list", "--status", "open", "--unassigned")[0]["status"] == "open"
    assert daemon.json("tickets", "list", "--status", "closed") == []
    assert len(daemon.json("audit", "incoming", "--action", "created_ticket")) == 3
    assert daemon.json("spool", "list") == []
    text = daemon.cli("tickets", "show", "1")
    assert "list 0" in text and "From: l0@client.test" in text
