"""The organizations and customers pages and API, and the ticket page's header, as an agent
reads them: a running daemon fed over SMTP, its admin endpoint over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable

from conftest import Daemon
from test_admin import admin_daemon
from test_search import MAILS, mail_all

ORGS = """
[[organizations]]
name = "Acme"
domains = ["customer.test"]
notes = "Our oldest customer"
on_new_ticket = { priority = "high", add_tags = ["vip", "acme"] }
"""


def test_orgs_customers_and_a_customers_tickets_in_tables_with_counts_and_pages(
        make_daemon: Callable[..., Daemon]) -> None:
    d, http = admin_daemon(make_daemon, ORGS)
    tickets = {sender: ticket for (sender, _), ticket in mail_all(d).items()}
    [second] = mail_all(d, [("jane@customer.test", "Jane Doe", "Second question",
                              "And another thing.\r\n\r\nOn Mon, 1 Jun 2026, Support"
                              " wrote:\r\n> the old quoted answer\r\n")]).values()

    orgs = http.get("/orgs").text
    row = orgs[orgs.index("Acme"):orgs.index("</tr>", orgs.index("Acme"))]
    assert "customer.test" in row and "Our oldest customer" in row
    assert '<a href="/customers?org=Acme">2</a>' in row  # Jane and Carol
    assert "3 <span" in row  # open tickets: Jane's two and Carol's one
    assert "New tickets: priority high; tag vip, acme." in row

    people = http.get("/customers").text
    assert "4 customers" in people and "Bob Builder" in people
    acme = http.get("/customers?org=Acme").text
    assert "2 customers" in acme and "Bob Builder" not in acme
    found = http.get("/customers?q=k%C3%BChn").text
    assert "1 customer" in found and "Carol" in found
    first = http.get("/customers?limit=3")
    assert first.status == 200 and 'rel="next"' in first.text
    assert http.get("/customers?org=Nobody").status == 400

    cli = d.run_cli("customers", "list", "--limit", "2")
    assert "4 customers match; 2 more after these: use --limit or --offset 2" in cli.stderr
    rest_cli = json.loads(d.run_cli("customers", "list", "--offset", "2", "--json").stdout)
    assert [c["email"] for c in rest_cli] == ["dave@third.test", "jane@customer.test"]  # by address
    found_cli = json.loads(d.run_cli("customers", "list", "--search", "kühn", "--json").stdout)
    assert [c["email"] for c in found_cli] == ["carol@customer.test"]

    api = http.get("/api/customers?limit=2")
    assert api.headers["X-Total-Count"] == "4" and len(api.json()) == 2
    link = api.headers["Link"]
    rest = http.get(link[1:link.index(">")]).json()
    assert {c["email"] for c in api.json() + rest} == {m[0] for m in MAILS}

    jane = next(c for c in api.json() + rest if c["email"] == "jane@customer.test")
    assert jane["organization"] == "Acme" and jane["open_tickets"] == 2
    page = http.get(f"/customers/{jane['id']}").text
    assert "Jane Doe" in page and "Second question" in page and "Printer jam" in page
    assert "Invoice" not in page
    one = http.get(f"/api/customers/{jane['id']}?limit=1").json()
    assert one["ticket_total"] == 2 and len(one["tickets"]) == 1 and one["next_cursor"]
    assert http.get("/customers/999999").status == 404
    assert http.get("/api/customers/999999").status == 404

    header = http.get(f"/tickets/{tickets['jane@customer.test']}").text
    assert f'href="/customers/{jane["id"]}"' in header
    assert 'href="/customers?org=Acme"' in header
    assert 'href="/tickets?tag=vip"' in header and ">high<" in header

    # the conversation: who wrote is shown at a glance; quoted history folded behind "Show all"
    page = http.get(f"/tickets/{second}").text
    body = page[page.index('<pre class="body">'):]
    assert body.index("And another thing.") < body.index("Show all")
    assert "the old quoted answer" not in body[:body.index("Show all")]
    assert "the old quoted answer" in body[body.index("Show all"):]
    assert '<span class="badge in">customer</span>' in page


def test_tags_and_participants_are_edited_on_the_ticket_page_and_recorded(
        make_daemon: Callable[..., Daemon]) -> None:
    d, http = admin_daemon(make_daemon)
    [ticket] = mail_all(d, MAILS[:1]).values()

    r = http.post(f"/tickets/{ticket}/tags", form={"tags": "Billing, urgent-ish  vip"})
    assert r.status == 303 and r.headers["Location"].endswith("notice=tagged"), r.text
    assert d.json("tickets", "show", str(ticket))["tags"] == ["billing", "urgent-ish", "vip"]
    assert _ids_of(d.json("tickets", "list", "--tag", "vip")) == [ticket]
    bad = http.post(f"/tickets/{ticket}/tags", form={"tags": "<script>"})
    assert bad.status == 400 and "not a tag" in bad.text

    r = http.post(f"/tickets/{ticket}/participants/add", form={"email": "boss@customer.test"})
    assert r.status == 303, r.text
    assert "boss@customer.test" in d.json("tickets", "show", str(ticket))["participants"]
    page = http.get(f"/tickets/{ticket}").text
    assert '<option value="boss@customer.test">' in page
    r = http.post(f"/tickets/{ticket}/participants/remove",
                  form={"email": "boss@customer.test"})
    assert r.status == 303, r.text
    assert "boss@customer.test" not in d.json("tickets", "show", str(ticket))["participants"]
    history = [(h["actor"], h["action"]) for h in http.get(
        f"/api/tickets/{ticket}/actions").json()]
    assert history == [("admin-token", "tags"), ("admin-token", "participant_add"),
                       ("admin-token", "participant_remove")]


def _ids_of(rows: list[dict]) -> list[int]:
    return [r["id"] for r in rows]
