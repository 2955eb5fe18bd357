"""The real corpus as an MTA delivers it: every message of ../shared/corpus/ over SMTP (CRLF,
dot-stuffed) to a running daemon, accepted, ending as its label says; and a sample relayed by a
real Postfix (Debian's package, an instance of its own under a temporary directory) into
mailgate — long lines and 8-bit mail included — each ending as its label says too."""

from __future__ import annotations

import os
import shutil
import smtplib
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CORPUS, Daemon, crlf, free_port, queue_id_of, write_config

LABELS = [line.split("\t") for line in (CORPUS / "labels.tsv").read_text().splitlines()[1:]
          if line]
EXPECTED = {
    "customer": {"created_ticket", "appended", "duplicate"},
    "bounce": {"bounce"},
    "feedback_report": {"ignored"},
    "auto_reply": {"ignored", "appended"},  # appended only as an internal note
}


def _audit(data_dir: Path) -> dict[str, tuple[str, str, str]]:
    """queue id (and envelope sender) → (action, reason, raw path) from the daemon's database."""
    conn = sqlite3.connect(f"file:{data_dir / 'mailgate.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT a.queue_id, a.mail_from, a.action, a.reason, m.raw_path FROM audit_incoming a"
            " LEFT JOIN messages m ON m.id = a.message_row").fetchall()
    finally:
        conn.close()
    found: dict[str, tuple[str, str, str]] = {}
    for queue_id, mail_from, action, reason, raw_path in rows:
        found[queue_id] = found[mail_from] = (action, reason or "", raw_path or "")
    return found


def _wait_for(data_dir: Path, keys: list[str], timeout: float) -> dict[str, tuple[str, str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        audit = _audit(data_dir)
        missing = [k for k in keys if k not in audit]
        if not missing or time.monotonic() > deadline:
            return audit
        time.sleep(0.5)


class _Recorder(smtplib.SMTP):
    """smtplib that remembers the reply to the final dot (sendmail returns only refusals)."""

    last_data_reply = ""

    def data(self, msg: bytes | str) -> tuple[int, bytes]:  # type: ignore[override]
        code, reply = super().data(msg)
        self.last_data_reply = f"{code} {reply.decode(errors='replace')}"
        return code, reply


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[Daemon, dict[str, str], dict[str, tuple[str, str, str]]]]:
    root = tmp_path_factory.mktemp("corpus-smtp")
    port = free_port()
    daemon = Daemon(write_config(root, port), port)
    daemon.start()
    replies: dict[str, str] = {}
    with _Recorder("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo("mta.corpus.test")
        for path, _ in LABELS:
            raw = crlf((CORPUS / path).read_bytes())
            try:
                smtp.sendmail("sender@corpus.test", ["support@example.com"], raw)
                replies[path] = smtp.last_data_reply
            except smtplib.SMTPResponseException as exc:
                replies[path] = f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
                smtp.rset()
    queue_ids = [queue_id_of(r) for r in replies.values() if r.startswith("250")]
    audit = _wait_for(daemon.data_dir, queue_ids, timeout=180)
    yield daemon, replies, audit
    daemon.stop()


@pytest.mark.parametrize(("path", "label"), LABELS, ids=[p for p, _ in LABELS])
def test_corpus_message_over_smtp(corpus_run, path: str, label: str) -> None:
    daemon, replies, audit = corpus_run
    reply = replies[path]
    assert reply.startswith("250 2.0.0"), reply
    action, reason, raw_path = audit[queue_id_of(reply)]
    assert action in EXPECTED[label], (action, reason)
    if raw_path:  # a ticket message: stored byte-exact under our Authentication-Results
        sent = crlf((CORPUS / path).read_bytes())
        if not sent.endswith(b"\r\n"):  # a client ends the last line before the final dot
            sent += b"\r\n"
        assert (daemon.data_dir / raw_path).read_bytes().endswith(sent)


# --- through a real Postfix ----------------------------------------------------------------------


def _sample() -> list[tuple[str, str]]:
    """Every corpus message with a line over 998 bytes, the 8-bit ones, and a few of each
    label."""
    chosen: dict[str, str] = {}
    for path, label in LABELS:
        data = (CORPUS / path).read_bytes()
        if any(len(line) > 998 for line in data.splitlines()):
            chosen[path] = label
    eight_bit = [(p, lbl) for p, lbl in LABELS if any(b > 127 for b in (CORPUS / p).read_bytes())]
    chosen.update(dict(eight_bit[:30]))
    for wanted in EXPECTED:
        chosen.update(dict([(p, lbl) for p, lbl in LABELS if lbl == wanted][:5]))
    return sorted(chosen.items())


SAMPLE = _sample()


class Postfix:
    """A Postfix instance of its own: config, queue and data under a temporary directory, its
    smtpd on a free loopback port, relaying everything to `relay_port`."""

    def __init__(self, relay_port: int) -> None:
        if os.geteuid() != 0 or not Path("/usr/sbin/postfix").exists():
            pytest.skip("needs Debian's postfix package and root (.ci/run installs it)")
        self.dir = Path(tempfile.mkdtemp(prefix="mailgate-postfix-"))
        self.dir.chmod(0o755)  # the postfix user walks into its queue
        self.port = free_port()
        conf, queue, data = (self.dir / n for n in ("conf", "queue", "data"))
        for d in (conf, queue, data):
            d.mkdir()
        shutil.chown(data, "postfix")
        shipped = Path("/usr/share/postfix")  # the package's own copies, whatever debconf said
        shutil.copy(shipped / "master.cf.dist", conf / "master.cf")
        shutil.copy(shipped / "dynamicmaps.cf", conf / "dynamicmaps.cf")
        master = (conf / "master.cf").read_text().splitlines()
        master = [line for line in master if not line.startswith("smtp      inet")]
        master.append(f"127.0.0.1:{self.port} inet n - n - - smtpd")
        (conf / "master.cf").write_text("\n".join(master) + "\n")
        (conf / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
myhostname = relay.postfix.test
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
relayhost = [127.0.0.1]:{relay_port}
message_size_limit = 60000000
smtp_tls_security_level = none
smtpd_tls_security_level = none
disable_dns_lookups = yes
smtp_host_lookup = native
maillog_file = {self.dir}/maillog
maillog_file_prefixes = {self.dir}
""")
        self.conf = conf
        self._postfix("start")
        deadline = time.monotonic() + 20
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as s:
                    s.ehlo("client.test")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postfix did not start:\n{self.log()}") from None
                time.sleep(0.2)

    def _postfix(self, command: str) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), command], check=False,
                       capture_output=True, timeout=60)

    def log(self) -> str:
        path = self.dir / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def queue_is_empty(self) -> bool:
        done = subprocess.run(["postqueue", "-c", str(self.conf), "-p"], capture_output=True,
                              text=True, timeout=30)
        return "Mail queue is empty" in done.stdout

    def stop(self) -> None:
        self._postfix("stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def via_postfix(tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[Daemon, Postfix, dict[str, tuple[str, str, str]]]]:
    root = tmp_path_factory.mktemp("corpus-postfix")
    port = free_port()
    daemon = Daemon(write_config(root, port), port)
    daemon.start()
    postfix = Postfix(port)
    try:
        senders = []
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as smtp:
            smtp.ehlo("mua.corpus.test")
            for n, (path, _) in enumerate(SAMPLE):
                sender = f"corpus-{n}@corpus.test"
                raw = crlf((CORPUS / path).read_bytes())
                smtp.sendmail(sender, ["support@example.com"], raw)
                senders.append(sender)
        audit = _wait_for(daemon.data_dir, senders, timeout=180)
        yield daemon, postfix, audit
    finally:
        postfix.stop()
        daemon.stop()


@pytest.mark.parametrize(("n", "path", "label"), [(n, p, lbl) for n, (p, lbl) in
                                                  enumerate(SAMPLE)], ids=[p for p, _ in SAMPLE])
def test_corpus_message_relayed_by_postfix(via_postfix, n: int, path: str, label: str) -> None:
    _, postfix, audit = via_postfix
    found = audit.get(f"corpus-{n}@corpus.test")
    assert found is not None, f"never reached mailgate:\n{postfix.log()[-3000:]}"
    action, reason, _ = found
    assert action in EXPECTED[label], (action, reason)


def test_postfix_queue_is_empty_afterwards(via_postfix) -> None:
    """Nothing was refused, deferred or bounced on the way: Postfix handed everything over."""
    _, postfix, _ = via_postfix
    assert postfix.queue_is_empty(), postfix.log()[-3000:]
