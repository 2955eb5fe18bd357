"""Merge and split, internal notes, replies with attachments and canned replies — end to end:
a running daemon fed over SMTP, its CLI, its admin endpoint over HTTP (urllib) and a real
aiosmtpd relay stub that receives what is sent.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Daemon,
    free_port,
    queue_id_of,
    relay_section,
    send,
    write_config,
)
from relay_stub import RelayStub
from test_admin import Client, Reply, admin_section, wait_for, wait_http

LIMIT = 6000  # [admin] max_upload_bytes of the endpoint's daemon


def _mail(d: Daemon, subject: str, sender: str = "jane@customer.test", name: str = "Jane Doe",
          to: str = "support@example.com", in_reply_to: str = "", body: str = "") -> tuple[
              str, str]:
    """Send one mail and wait for its audit row; (queue id, Message-ID)."""
    mid = f"{uuid.uuid4().hex}@customer.test"
    head = (f"From: {name} <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n")
    if in_reply_to:
        head += f"In-Reply-To: <{in_reply_to}>\r\nReferences: <{in_reply_to}>\r\n"
    code, reply = send(d.port, head + f"\r\n{body or 'Hello about ' + subject}.\r\n",
                       mail_from=sender, rcpts=(to,))
    assert code == 250, reply
    qid = queue_id_of(reply)
    d.audit_for(qid)
    return qid, mid


def _ticket_of(d: Daemon, qid: str) -> int:
    row = d.audit_for(qid)
    assert row["ticket_id"], row
    return int(row["ticket_id"])


# --- merge: later mail to the merged ticket lands on the one it was merged into --------------


@pytest.mark.both_engines
def test_merged_ticket_forwards_mail_to_its_token_and_its_message_ids(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    qa, _ = _mail(d, "Printer on fire")
    qb, mid_b = _mail(d, "Scanner jammed", sender="bob@other.test", name="Bob")
    a, b = _ticket_of(d, qa), _ticket_of(d, qb)
    assert a != b
    token_b = d.json("tickets", "show", str(b))["reply_address"]

    out = d.cli("tickets", "merge", str(b), "--into", str(a))
    assert f"ticket #{b} merged into #{a}" in out

    merged = d.json("tickets", "show", str(b))
    assert merged["status"] == "closed" and merged["merged_into"] == a
    assert [m["direction"] for m in merged["messages"]] == ["note"]  # the merge record only
    assert f"Merged into ticket #{a}" in merged["messages"][0]["text"]
    target = d.json("tickets", "show", str(a))
    assert target["merged_from"] == [b]
    assert "bob@other.test" in target["participants"]
    assert mid_b in [m["message_id"] for m in target["messages"]]
    assert any(m["direction"] == "note" and f"Ticket #{b}" in m["text"]
               for m in target["messages"])

    # Bob answers to B's reply address, and again quoting his first message: both land on A.
    q1, _ = _mail(d, "Re: Scanner jammed", sender="bob@other.test", name="Bob", to=token_b)
    q2, _ = _mail(d, "Re: Scanner jammed", sender="bob@other.test", name="Bob",
                  in_reply_to=mid_b)
    for qid, method in ((q1, "token"), (q2, "in-reply-to")):
        row = d.audit_for(qid)
        assert row["ticket_id"] == a and row["matched_by"] == method, row
    assert len(d.json("tickets", "show", str(b))["messages"]) == 1
    assert len(d.json("tickets", "show", str(a))["messages"]) == 2 + 1 + 2  # mail, note, mail

    # merging again is refused in one line
    err = d.cli("tickets", "merge", str(b), "--into", str(a), expect=1)
    assert f"ticket #{b} was merged into #{a} already" in err and err.count("\n") == 1


# --- split ------------------------------------------------------------------------------------


def test_split_with_later_moves_the_message_and_the_ones_after_into_a_linked_ticket(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    q1, m1 = _mail(d, "Two problems")
    q2, m2 = _mail(d, "Re: Two problems", in_reply_to=m1, body="Second problem: the fax")
    q3, m3 = _mail(d, "Re: Two problems", in_reply_to=m2, body="The fax again")
    tid = _ticket_of(d, q1)
    assert _ticket_of(d, q2) == _ticket_of(d, q3) == tid
    rows = [m["id"] for m in d.json("tickets", "show", str(tid))["messages"]]
    assert len(rows) == 3

    out = d.cli("tickets", "split", str(tid), "--message", str(rows[1]), "--with-later")
    new = int(out.rsplit("#", 1)[1])
    old_t, new_t = d.json("tickets", "show", str(tid)), d.json("tickets", "show", str(new))
    assert [m["id"] for m in old_t["messages"] if m["direction"] != "note"] == rows[:1]
    assert [m["id"] for m in new_t["messages"] if m["direction"] != "note"] == rows[1:]
    assert new_t["linked_ticket_id"] == tid and old_t["linked_from"] == [new]  # both ways
    assert new_t["requester"] == old_t["requester"] and new_t["mailbox"] == old_t["mailbox"]
    assert any("split off into ticket" in m["text"] for m in old_t["messages"])
    shown = d.cli("tickets", "show", str(tid))
    assert f"linked_from: {new}" in shown and "[internal note]" in shown

    # a reply to a message that moved follows it
    q4, _ = _mail(d, "Re: Two problems", in_reply_to=m3)
    assert _ticket_of(d, q4) == new
    # the last message cannot be split off: the ticket would be empty
    err = d.cli("tickets", "split", str(tid), "--message", str(rows[0]), expect=1)
    assert "would leave ticket" in err and err.count("\n") == 1


# --- the admin endpoint: notes, attachments, canned replies, merge and split by the API ------


@dataclass
class Desk:
    daemon: Daemon
    http: Client
    relay: RelayStub


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    relay = RelayStub(port=free_port()).start()
    port, admin_port = free_port(), free_port()
    cfg = write_config(tmp_path_factory.mktemp("desk"), port, relay_section(relay.port)
                       + admin_section(admin_port, f"max_upload_bytes = {LIMIT}"))
    daemon = Daemon(cfg, port)
    daemon.start()
    client = Client(f"http://127.0.0.1:{admin_port}", daemon.data_dir / "admin.token")
    try:
        wait_http(client, daemon)
        yield Desk(daemon, client, relay)
    finally:
        daemon.stop()
        relay.stop()


def _multipart(client: Client, path: str, fields: dict[str, str],
               files: list[tuple[str, bytes, str]], auth: bool = True) -> Reply:
    boundary = "b" + secrets.token_hex(12)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for filename, data, ctype in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="attachment";'
                     f' filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
                     + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    import urllib.error
    import urllib.request

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if auth:
        headers["Authorization"] = f"Bearer {client.token}"
    request = urllib.request.Request(client.base + path, data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read())


def _attachments(message: Any) -> list[tuple[str, bytes]]:
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return [(part.get_filename(), part.get_payload(decode=True))
            for part in parsed.iter_attachments()]


def _for_ticket(relay: RelayStub, tid: int) -> list[Any]:
    """What the relay received about ticket `tid`."""
    return [m for m in list(relay.messages) if f"X-Mailgate-Ticket: {tid}\r\n".encode()
            in m.data.split(b"\r\n\r\n", 1)[0] + b"\r\n"]


def _wait_relay(relay: RelayStub, tid: int, words: str) -> Any:
    """The first mail about `tid` at the relay whose text has `words`."""
    def found() -> list[Any]:
        return [m for m in _for_ticket(relay, tid) if words in _plain(m)]
    return wait_for(found, bool, f"mail about #{tid} with {words!r} at the relay")[0]


def _plain(message: Any) -> str:
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    body = parsed.get_body(("plain",))
    return body.get_content() if body is not None else ""


def _rows(d: Daemon, tid: int) -> list[dict[str, Any]]:
    return d.json("audit", "outgoing", "--ticket", str(tid))


def _settle(d: Daemon, relay: RelayStub, tid: int, rows: int, mails: int) -> None:
    """Nothing more goes out about `tid`: its outgoing rows and the relay stay as they were."""
    time.sleep(1.0)
    assert len(_rows(d, tid)) == rows
    assert len(_for_ticket(relay, tid)) == mails


def test_internal_note_is_shown_and_never_mailed(desk: Desk) -> None:
    d, http, relay = desk.daemon, desk.http, desk.relay
    tid = _ticket_of(d, _mail(d, "Note me")[0])
    wait_for(lambda: _for_ticket(relay, tid), bool, "the acknowledgement at the relay")
    rows, mails = len(_rows(d, tid)), len(_for_ticket(relay, tid))
    r = http.post(f"/api/tickets/{tid}/note", form={"body": "Customer is a VIP <b>x</b>"})
    assert r.status == 200, r.text
    out = d.cli("tickets", "note", str(tid), "--body", "Called them back", "--agent",
                "alice@example.com")
    assert "internal note added" in out
    shown = d.cli("tickets", "show", str(tid))
    assert shown.count("[internal note]") == 2 and "Called them back" in shown
    notes = [m for m in d.json("tickets", "show", str(tid))["messages"]
             if m["direction"] == "note"]
    assert [n["from"] for n in notes] == ["admin-token", "alice@example.com"]
    page = http.get(f"/tickets/{tid}").text
    assert "internal note" in page and "Customer is a VIP &lt;b&gt;x&lt;/b&gt;" in page
    _settle(d, relay, tid, rows, mails)


def test_reply_with_attachments_reaches_the_relay_with_the_same_bytes(
        desk: Desk, tmp_path: Path) -> None:
    d, http, relay = desk.daemon, desk.http, desk.relay
    tid = _ticket_of(d, _mail(d, "Send me the manual")[0])
    blob = secrets.token_bytes(3000)
    r = _multipart(http, f"/api/tickets/{tid}/reply",
                   {"agent": "alice@example.com", "body": "Here is the manual."},
                   [("../../etc/manual.pdf", blob, "application/pdf")])
    assert r.status == 200, r.text
    files = _attachments(_wait_relay(relay, tid, "Here is the manual."))
    assert [(n, hashlib.sha256(b).hexdigest()) for n, b in files] == [
        ("manual.pdf", hashlib.sha256(blob).hexdigest())]  # the path is gone from the name
    ticket = d.json("tickets", "show", str(tid))
    out_msg = [m for m in ticket["messages"] if m["direction"] == "out"][-1]
    [att] = out_msg["attachments"]
    assert att["filename"] == "manual.pdf" and att["sha256"] == hashlib.sha256(blob).hexdigest()
    download = http.get(f"/api/messages/{out_msg['id']}/attachments/{att['id']}")
    assert download.status == 200 and download.body == blob
    page = http.get(f"/tickets/{tid}").text
    assert f"/messages/{out_msg['id']}/attachments/{att['id']}" in page
    assert 'enctype="multipart/form-data"' in page and 'type="file"' in page

    # the CLI: two files
    one, two = tmp_path / "log.txt", tmp_path / "photo.png"
    one.write_bytes(b"line\n" * 100)
    two.write_bytes(secrets.token_bytes(1000))
    out = d.cli("tickets", "reply", str(tid), "--agent", "alice@example.com", "--body",
                "Two files", "--attach", str(one), "--attach", str(two))
    assert "with 2 attachment(s)" in out
    files = _attachments(_wait_relay(relay, tid, "Two files"))
    assert {n: hashlib.sha256(b).hexdigest() for n, b in files} == {
        "log.txt": hashlib.sha256(one.read_bytes()).hexdigest(),
        "photo.png": hashlib.sha256(two.read_bytes()).hexdigest()}


def test_uploads_over_the_limit_are_refused_and_nothing_is_sent(desk: Desk, tmp_path: Path
                                                                ) -> None:
    d, http, relay = desk.daemon, desk.http, desk.relay
    tid = _ticket_of(d, _mail(d, "Big files")[0])
    wait_for(lambda: _for_ticket(relay, tid), bool, "the acknowledgement at the relay")
    rows, mails = len(_rows(d, tid)), len(_for_ticket(relay, tid))
    for size in (LIMIT + 1, LIMIT + 2 * 1024 * 1024):  # the reply path's check; the body limit
        r = _multipart(http, f"/api/tickets/{tid}/reply",
                       {"agent": "alice@example.com", "body": "too big"},
                       [("big.bin", b"x" * size, "application/octet-stream")])
        assert r.status == 413, (size, r.status, r.text)
        assert "max_upload_bytes" in r.json()["error"], r.text
    big = tmp_path / "big.bin"
    big.write_bytes(b"y" * (LIMIT + 1))
    err = d.cli("tickets", "reply", str(tid), "--agent", "alice@example.com", "--body", "x",
                "--attach", str(big), expect=1)
    assert "max_upload_bytes" in err and err.count("\n") == 1
    _settle(d, relay, tid, rows, mails)
    assert [m for m in d.json("tickets", "show", str(tid))["messages"]
            if m["direction"] == "out"] == []


def test_canned_reply_is_rendered_with_the_tickets_context(desk: Desk) -> None:
    d, http, relay = desk.daemon, desk.http, desk.relay
    tid = _ticket_of(d, _mail(d, "Where is my order", name="Jane Doe")[0])
    names = [c["name"] for c in http.get("/api/canned").json()]
    assert "thanks" in names
    r = http.get(f"/api/tickets/{tid}/canned/thanks?agent=alice@example.com")
    assert r.status == 200, r.text
    text = r.json()["text"]
    assert text.startswith("Hello Jane Doe,")
    assert f"request #{tid}" in text and '"Where is my order"' in text
    assert text.rstrip().endswith("Alice Agent")
    page = http.get(f"/tickets/{tid}?canned=thanks&agent=alice@example.com").text
    assert "Hello Jane Doe," in page and f"request #{tid}" in page
    d.cli("tickets", "reply", str(tid), "--agent", "alice@example.com", "--canned", "thanks")
    plain = _plain(_wait_relay(relay, tid, "will get back to you shortly"))
    assert plain.startswith("Hello Jane Doe,") and '"Where is my order"' in plain


def test_merge_and_split_by_the_api(desk: Desk) -> None:
    d, http = desk.daemon, desk.http
    a = _ticket_of(d, _mail(d, "API merge A")[0])
    b = _ticket_of(d, _mail(d, "API merge B", sender="carol@other.test", name="Carol")[0])
    r = http.post(f"/api/tickets/{b}/merge", form={"into": str(a)})
    assert r.status == 200 and r.json()["merged_into"] == a, r.text
    assert r.json()["by"] == "admin-token"
    history = http.get(f"/api/tickets/{a}/actions").json()
    assert [(h["actor"], h["action"], h["details"]) for h in history] == [
        ("admin-token", "merge", {"source": b})]
    again = http.post(f"/api/tickets/{b}/merge", form={"into": str(a)})
    assert again.status == 409 and "already" in again.json()["error"]
    rows = [m["id"] for m in d.json("tickets", "show", str(a))["messages"]
            if m["direction"] == "in"]
    r = http.post(f"/api/tickets/{a}/split", body={"message": rows[-1], "agent":
                                                   "alice@example.com"})
    assert r.status == 200, r.text
    new = r.json()["new_ticket_id"]
    assert r.json()["by"] == "alice@example.com"
    assert d.json("tickets", "show", str(new))["linked_ticket_id"] == a
    page = http.get(f"/tickets/{a}").text
    assert f'href="/tickets/{new}"' in page and f'href="/tickets/{b}"' in page
    assert "Merged into" in http.get(f"/tickets/{b}").text

    # the ticket page's forms (with the token here; a session needs its CSRF token as ever)
    r = http.post(f"/tickets/{new}/note", form={"body": "panel note", "agent": ""})
    assert r.status == 303 and r.headers["Location"] == f"/tickets/{new}?notice=noted", r.text
    r = http.post(f"/tickets/{new}/merge", form={"into": str(a)})
    assert r.status == 303 and r.headers["Location"] == f"/tickets/{a}?notice=merged", r.text
    r = http.post(f"/tickets/{a}/merge", form={"into": str(b)})  # b is merged: refused
    assert r.status == 409 and "was merged into" in r.text
    notes = [m for m in d.json("tickets", "show", str(a))["messages"]
             if m["from"] == "admin-token"]
    texts = [n["text"] for n in notes]
    assert "panel note" in texts and any(f"Ticket #{new} " in t for t in texts), texts


NEW_ROUTES = (("POST", "/api/tickets/1/note"), ("POST", "/api/tickets/1/merge"),
              ("POST", "/api/tickets/1/split"), ("GET", "/api/canned"),
              ("GET", "/api/tickets/1/canned/thanks"), ("POST", "/api/tickets/1/reply"))


@pytest.mark.parametrize(("method", "path"), NEW_ROUTES)
def test_new_routes_need_the_token(desk: Desk, method: str, path: str) -> None:
    r = desk.http.call(method, path, auth=False, form={} if method == "POST" else None)
    assert r.status == 401 and "token" in r.json()["error"]


def test_new_routes_answer_bad_input_with_json_errors(desk: Desk) -> None:
    d, http = desk.daemon, desk.http
    tid = _ticket_of(d, _mail(d, "Bad input")[0])
    cases = [
        (http.post(f"/api/tickets/{tid}/note", form={"body": "  "}), 400, "body: required"),
        (http.post("/api/tickets/999999/note", form={"body": "x"}), 404, "no ticket #999999"),
        (http.post(f"/api/tickets/{tid}/note", form={"body": "x", "agent": "eve@evil.test"}),
         409, "not a configured agent"),
        (http.post(f"/api/tickets/{tid}/merge", form={"into": "abc"}), 400, "into"),
        (http.post(f"/api/tickets/{tid}/merge", form={}), 400, "into: required"),
        (http.post(f"/api/tickets/{tid}/merge", form={"into": str(tid)}), 409, "itself"),
        (http.post(f"/api/tickets/{tid}/merge", form={"into": "999999"}), 404, "#999999"),
        (http.post(f"/api/tickets/{tid}/split", form={}), 400, "message: required"),
        (http.post(f"/api/tickets/{tid}/split", form={"message": "999999"}), 404,
         "no message #999999"),
        (http.post(f"/api/tickets/{tid}/split", form={"message": "1", "with_later": "maybe"}),
         400, "with_later"),
        (http.get(f"/api/tickets/{tid}/canned/nope"), 404, "no canned reply 'nope'"),
        (http.get(f"/api/tickets/{tid}/canned/..%2Fbase"), 400, "not a canned reply name"),
        (http.get("/api/tickets/999999/canned/thanks"), 404, "no ticket #999999"),
    ]
    for reply, status, words in cases:
        assert reply.status == status and words in reply.json()["error"], (status, reply.text)
