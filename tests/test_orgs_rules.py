"""Organizations, per-organization routing and the automation engine on a running daemon."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Daemon, queue_id_of, send, wait_outgoing
from relay_stub import RelayStub

AGENTS = '''
[[agents]]
name = "Bob Agent"
email = "bob@example.com"

[[agents]]
name = "Carol Agent"
email = "carol@example.com"
'''


def mail(subject: str, mid: str, sender: str, extra: str = "", body: str = "Hello.") -> str:
    return (f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n{extra}\r\n{body}\r\n")


def ticket_of(d: Daemon, data: str, **kw) -> dict:
    row = d.audit_for(queue_id_of(send(d.port, data, **kw)[1]))
    assert row["ticket_id"] is not None, row
    return d.json("tickets", "show", str(row["ticket_id"]))


def wait_for(predicate: Callable[[], object], timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.1)


def explain(d: Daemon, ticket_id: int) -> dict[tuple[str, str], str]:
    return {(r["event"], r["rule"]): r["result"] for r in d.json("rules", "explain",
                                                                 str(ticket_id))}


# --- organizations ---------------------------------------------------------------------------


def test_join_by_domain_and_parent_domain_and_auto_create(out_daemon) -> None:
    d = out_daemon(extra=AGENTS + '''
[customers]
auto_create_organizations = true
free_mail_domains = ["mail.isp.test"]

[[organizations]]
name = "Acme"
domains = ["acme.com"]
notes = "Key account"
''')
    assert ticket_of(d, mail("a", "o1@acme.com", "jo@acme.com"))["organization"] == "Acme"
    assert ticket_of(d, mail("b", "o2@eu.acme.com", "li@eu.acme.com"))["organization"] == "Acme"
    first = ticket_of(d, mail("c", "o3@newco.test", "ann@newco.test"))
    assert first["organization"] == "newco.test"
    second = ticket_of(d, mail("d", "o4@newco.test", "ben@newco.test"))
    assert second["organization"] == "newco.test"
    for sender in ("someone@gmail.com", "other@outlook.com", "x@mail.isp.test"):
        assert ticket_of(d, mail("e", f"o-{sender}", sender))["organization"] == ""
    orgs = {o["name"]: o for o in d.json("orgs", "list")}
    assert set(orgs) == {"Acme", "newco.test"}
    assert orgs["newco.test"]["auto_created"] is True and orgs["newco.test"]["customers"] == 2
    assert orgs["Acme"]["domains"] == ["acme.com"] and orgs["Acme"]["customers"] == 2
    customers = d.json("customers", "list", "--org", "newco.test")
    assert {c["email"] for c in customers} == {"ann@newco.test", "ben@newco.test"}
    assert [t["id"] for t in d.json("tickets", "list", "--org", "Acme")] == [3 - 1, 1]


def test_orgs_cli(out_daemon) -> None:
    d = out_daemon(extra=AGENTS)
    ticket_of(d, mail("early", "c1@globex.test", "hank@globex.test"))
    ticket_of(d, mail("early2", "c2@globex.test", "mo@sub.globex.test"))
    assert "created" in d.cli("orgs", "create", "Globex", "--domain", "globex.test")
    assert d.json("customers", "list", "--org", "Globex") == []  # not without --join-existing
    d.cli("orgs", "remove-domain", "Globex", "globex.test")
    out = d.cli("orgs", "add-domain", "Globex", "globex.test", "--join-existing")
    assert "2 customers joined" in out
    err = d.cli("orgs", "create", "Other", "--domain", "globex.test", expect=1)
    assert "already belongs to organization 'Globex'" in err
    err = d.cli("orgs", "show", "Nope", expect=1)
    assert "no organization named 'Nope'" in err
    d.cli("orgs", "route", "Globex", "--assign", "bob@example.com", "--priority", "high",
          "--tag", "vip")
    shown = d.json("orgs", "show", "Globex")
    assert shown["on_new_ticket"] == {"assign": "bob@example.com", "priority": "high",
                                      "add_tags": ["vip"]}
    assert "not a configured agent" in d.cli("orgs", "route", "Globex", "--assign",
                                            "eve@evil.test", expect=1)
    t = ticket_of(d, mail("routed", "c3@globex.test", "new@globex.test"))
    assert (t["assignee"], t["priority"], t["tags"]) == ("bob@example.com", "high", ["vip"])


def test_org_routing_with_a_different_template(out_daemon, relay: RelayStub,
                                               tmp_path: Path) -> None:
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "premium_ack.html").write_text(
        '{% extends "base.html" %}{% block content %}<p>Premium support: we answer within'
        ' the hour.</p>{% endblock %}\n')
    (tdir / "premium_ack.txt").write_text(
        '{% extends "base.txt" %}{% block content %}Premium support: we answer within the'
        ' hour.{% endblock %}\n')
    d = out_daemon(extra=AGENTS + f'''
[templates]
dir = "{tdir}"

[[organizations]]
name = "Initech"
domains = ["initech.test"]
[organizations.on_new_ticket]
round_robin = ["bob@example.com", "carol@example.com"]
priority = "urgent"
add_tags = ["premium"]
send_template = "premium_ack"
''')
    t1 = ticket_of(d, mail("first", "i1@initech.test", "pete@initech.test"))
    t2 = ticket_of(d, mail("second", "i2@initech.test", "mike@initech.test"))
    assert [t1["assignee"], t2["assignee"]] == ["bob@example.com", "carol@example.com"]
    assert t1["priority"] == "urgent" and t1["tags"] == ["premium"]
    to_pete = [m for m in relay.wait_for(4) if list(m.rcpt_tos) == ["pete@initech.test"]]
    assert len(to_pete) == 1  # the premium acknowledgement, not the default one as well
    text = email.message_from_bytes(to_pete[0].data, policy=email.policy.default)
    assert "Premium support" in text.get_body(("plain",)).get_content()
    kinds = sorted(r["kind"] for r in d.json("audit", "outgoing", "--ticket", str(t1["id"])))
    assert kinds == ["assignee_notification", "premium_ack"]


# --- the automation engine ---------------------------------------------------------------------

ENGINE = AGENTS + '''
[business_hours]
timezone = "UTC"
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
start = "00:00"
end = "23:59"

[[organizations]]
name = "Acme"
domains = ["acme.com"]

[[automations]]
name = "urgent mail"
when = "ticket_created"
if = { subject_contains = "urgent", from_domain = "acme.com", organization = "Acme" }
then = { priority = "urgent", add_tags = ["urgent", "temp"], assign = "bob@example.com" }

[[automations]]
name = "drop temp tag"
when = "assigned"
if = { assignee = "bob@example.com", tag = "temp", priority = "urgent" }
then = { remove_tags = ["temp"], internal_note = "assigned by rule" }

[[automations]]
name = "invoices by regex"
when = "ticket_created"
if = { matches = "invoice\\\\s+#?\\\\d+", mailbox = "sales@example.com", unassigned = true }
then = { round_robin = ["bob@example.com", "carol@example.com"], add_tags = ["billing"] }

[[automations]]
name = "vip sender"
when = "ticket_created"
if = { from = "ceo@acme.com", body_contains = "asap", business_hours = true }
then = { status = "pending_agent" }

[[automations]]
name = "answered"
when = "agent_replied"
then = { add_tags = ["answered"] }

[[automations]]
name = "resolved note"
when = "status_changed"
if = { status = "resolved" }
[automations.then]
internal_note = "resolved; a survey could go here"
send_template = { kind = "assignee_notification", to = "carol@example.com" }

[[automations]]
name = "reminder"
when = "idle"
after = "1s"
if = { status = ["open", "pending_agent"] }
then = { internal_note = "nobody touched this ticket", add_tags = ["stale"] }

[[automations]]
name = "escalate breach"
when = "sla_breached"
then = { priority = "high", add_tags = ["sla"] }

[[sla]]
name = "acme"
if = { organization = "Acme" }
first_response = "1s"
resolution = "2d"

[scheduler]
tick_seconds = 0.2
'''


def test_triggers_conditions_and_actions(out_daemon, relay: RelayStub) -> None:
    # no timers here: the SLA breach and the idle reminder (tested below) would change the
    # priority and tags it checks when a slow machine takes more than their second
    d = out_daemon(extra=ENGINE.replace('first_response = "1s"', 'first_response = "1h"')
                   .replace('after = "1s"', 'after = "1h"'))
    t = ticket_of(d, mail("URGENT: server down", "e1@acme.com", "ops@acme.com"))
    assert t["priority"] == "urgent" and t["assignee"] == "bob@example.com"
    assert t["tags"] == ["urgent"]  # "temp" added, then removed by the `assigned` rule
    notes = [m for m in t["messages"] if m["direction"] == "note"]
    assert [n["text"] for n in notes] == ["assigned by rule"]
    ex = explain(d, t["id"])
    assert ex[("ticket_created", "urgent mail")] == "hit"
    assert ex[("assigned", "drop temp tag")] == "hit"
    assert ex[("ticket_created", "invoices by regex")] == "miss"

    inv = ticket_of(d, mail("Question", "e2@x.test", "pay@x.test", body="About invoice #4711."),
                    rcpts=("sales@example.com",))
    inv2 = ticket_of(d, mail("Question 2", "e3@x.test", "pay@x.test", body="invoice 12"),
                     rcpts=("sales@example.com",))
    assert [inv["assignee"], inv2["assignee"]] == ["bob@example.com", "carol@example.com"]
    assert inv["tags"] == ["billing"]
    miss = ticket_of(d, mail("Question 3", "e4@x.test", "pay@x.test", body="invoice 13"))
    assert miss["assignee"] is None  # sent to support@, not sales@: the mailbox condition

    vip = ticket_of(d, mail("hi", "e5@acme.com", "ceo@acme.com", body="Need this ASAP"))
    assert vip["status"] == "pending_agent"

    # customer_replied: the built-in default workflow notifies the assignee
    d.audit_for(queue_id_of(send(d.port, mail("Re: URGENT: server down", "e6@acme.com",
                                              "ops@acme.com",
                                              extra="In-Reply-To: <e1@acme.com>\r\n"))[1]))
    assert explain(d, t["id"])[("customer_replied",
                                "notify the assignee of customer replies")] == "hit"
    wait_outgoing(d, lambda rows: sum(r["to"] == "bob@example.com" and r["ticket_id"] == t["id"]
                                      for r in rows) == 2)  # assignment, then the reply notice

    d.cli("tickets", "reply", str(t["id"]), "--agent", "bob@example.com", "--body", "On it")
    assert "answered" in d.json("tickets", "show", str(t["id"]))["tags"]
    d.cli("tickets", "status", str(t["id"]), "resolved")
    shown = d.json("tickets", "show", str(t["id"]))
    assert shown["messages"][-1]["text"] == "resolved; a survey could go here"
    rows = wait_outgoing(d, lambda rows: any(r["to"] == "carol@example.com"
                                             and r["ticket_id"] == t["id"] for r in rows))
    assert rows


def test_idle_rule_fires_once_also_across_a_restart(out_daemon) -> None:
    d = out_daemon(extra=ENGINE)
    t = ticket_of(d, mail("nobody answers", "i1@z.test", "quiet@z.test"))

    def stale() -> bool:
        return "stale" in d.json("tickets", "show", str(t["id"]))["tags"]

    wait_for(stale)
    time.sleep(1.0)  # several more ticks
    d.stop()
    d.start()
    time.sleep(1.5)
    notes = [m for m in d.json("tickets", "show", str(t["id"]))["messages"]
             if m["text"] == "nobody touched this ticket"]
    assert len(notes) == 1
    db = d.store()
    assert db.execute("SELECT COUNT(*) FROM rule_firings WHERE ticket_id=? AND rule='reminder'",
                      (t["id"],)).fetchone()[0] == 1
    db.close()


def test_sla_breach(out_daemon) -> None:
    d = out_daemon(extra=ENGINE)
    t = ticket_of(d, mail("help", "s1@acme.com", "dev@acme.com"))
    assert t["sla"]["policy"] == "acme" and t["sla"]["first_response_due"]

    def breached() -> bool:
        return "sla" in d.json("tickets", "show", str(t["id"]))["tags"]

    wait_for(breached)
    shown = d.json("tickets", "show", str(t["id"]))
    assert shown["sla"]["first_response_breached"] is True and shown["priority"] == "high"
    assert [x["id"] for x in d.json("tickets", "list", "--breached")] == [t["id"]]
    assert explain(d, t["id"])[("sla_breached", "escalate breach")] == "hit"


def test_depth_limit(out_daemon) -> None:
    d = out_daemon(extra=AGENTS + '''
[[automations]]
name = "ping"
when = "status_changed"
if = { status = "pending_agent" }
then = { status = "pending_customer" }

[[automations]]
name = "pong"
when = "status_changed"
if = { status = "pending_customer" }
then = { status = "pending_agent" }
''')
    t = ticket_of(d, mail("loop", "l1@z.test", "loop@z.test"))
    d.cli("tickets", "status", str(t["id"]), "pending_agent")
    rows = d.json("rules", "explain", str(t["id"]))
    assert any("depth limit 5" in r["why"] for r in rows)
    assert max(r["depth"] for r in rows) == 5


def test_rules_check_and_test(out_daemon, tmp_path: Path) -> None:
    d = out_daemon(extra=ENGINE)
    assert "rules" in d.cli("rules", "check") and ": ok" in d.cli("rules", "check")
    eml = tmp_path / "try.eml"
    eml.write_text(mail("URGENT: db down", "try1@acme.com", "ops@acme.com"))
    before = d.json("stats")
    import json

    result = json.loads(d.cli("rules", "test", str(eml)))
    assert result["classification"] == "normal" and result["action"] == "created_ticket"
    assert result["ticket"]["priority"] == "urgent"
    assert result["ticket"]["organization"] == "Acme"
    assert {"event": "ticket_created", "rule": "urgent mail", "result": "hit",
            "why": result["rules"][1]["why"]} in result["rules"]
    assert any(m["kind"] == "new_ticket_ack" for m in result["mail"])
    after = d.json("stats")
    assert after["tickets"] == before["tickets"]  # nothing was stored
    assert after["outgoing_by_status"] == before["outgoing_by_status"]
    # a broken rules file: one line naming file, rule and key
    bad = tmp_path / "bad-rules.toml"
    bad.write_text('[[automations]]\nname = "oops"\nwhen = "ticket_created"\n'
                   'if = { subject_containz = "x" }\nthen = { priority = "high" }\n')
    cfg = d.config.read_text() + f'\n[rules]\nfile = "{bad}"\n'
    d.config.write_text(cfg)
    err = d.cli("rules", "check", expect=1)
    assert str(bad) in err and '"oops"' in err and "subject_containz" in err
    assert len(err.strip().splitlines()) == 1
