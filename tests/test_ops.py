"""Running under systemd: sd_notify, the watchdog, socket activation, the SIGTERM drain, the
SIGHUP reload and the log formats — all against real `mailgate serve` subprocesses.

A unix datagram socket in the test stands in for systemd's `$NOTIFY_SOCKET`; a real aiosmtpd
server (tests/relay_stub.py) stands in for the relay.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, free_port, queue_id_of, relay_section, send, write_config
from relay_stub import RelayStub
from sdnotify_listener import NotifySocket

from mailgate.ops.logsetup import JsonFormatter, TextFormatter


class EnvDaemon(Daemon):
    """A `mailgate serve` subprocess with extra environment (and optionally a wrapper that
    hands it a listening socket as systemd does)."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None,
                 listen_sock: socket.socket | None = None) -> None:
        super().__init__(config, port)
        self.env = {**os.environ, **(env or {})}
        self.listen_sock = listen_sock

    def start(self, timeout: float = 20.0) -> None:
        log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "mailgate", "--config", str(self.config), "serve"]
        pass_fds: tuple[int, ...] = ()
        if self.listen_sock is not None:  # as systemd: the socket at fd 3, LISTEN_PID = ours
            fd = self.listen_sock.fileno()
            pass_fds = (fd,)
            cmd = [sys.executable, "-c",
                   "import os, sys; os.dup2(int(sys.argv[1]), 3); os.close(int(sys.argv[1]));"
                   " os.environ.update(LISTEN_FDS='1', LISTEN_FDNAMES='smtp',"
                   " LISTEN_PID=str(os.getpid())); os.execv(sys.executable, sys.argv[2:])",
                   str(fd), *cmd]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=self.config.parent,
                                     env=self.env, pass_fds=pass_fds)
        self.wait_listening(timeout)




@pytest.fixture
def env_daemon(tmp_path: Path) -> Iterator[Callable[..., EnvDaemon]]:
    started: list[EnvDaemon] = []

    def factory(extra: str = "", env: dict[str, str] | None = None, name: str = "d",
                listen_sock: socket.socket | None = None, server_extra: str = "") -> EnvDaemon:
        port = free_port() if listen_sock is None else listen_sock.getsockname()[1]
        config_port = port if listen_sock is None else free_port()
        cfg = write_config(tmp_path / name, config_port, extra, server_extra)
        d = EnvDaemon(cfg, port, env, listen_sock)
        d.start()
        started.append(d)
        return d

    yield factory
    for d in started:
        d.stop()


def message(mid: str, sender: str = "jane@customer.test", subject: str = "") -> bytes:
    return (f"From: Jane <{sender}>\r\nTo: support@example.com\r\nSubject: {subject or mid}\r\n"
            f"Message-ID: <{mid}>\r\n\r\nHello, this is {mid}.\r\n").encode()


def read_reply(sock: socket.socket) -> str:
    """One SMTP reply (all its lines) from a raw socket."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data.decode()
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return data.decode()


def stored_message_ids(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / "mailgate.db") as conn:
        rows = conn.execute("SELECT message_id, COUNT(*) FROM messages GROUP BY message_id")
        return {mid: n for mid, n in rows}


# --- sd_notify, watchdog, socket activation --------------------------------------------------


def test_ready_watchdog_and_stopping(env_daemon: Callable[..., EnvDaemon],
                                     notify: NotifySocket) -> None:
    d = env_daemon(env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000"})
    ready = notify.wait_for("READY=1")
    assert any(line.startswith("STATUS=accepting mail") for line in
               notify.messages[ready].split("\n"))
    first = notify.wait_for("WATCHDOG=1", timeout=5)
    notify.wait_for("WATCHDOG=1", timeout=5, after=first + 1)  # it keeps pinging
    code, reply = send(d.port, message("ready-1@client.test"))
    assert code == 250, reply
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1")
    assert d.stop() == 0
    assert "stopped" in d.log()


def test_watchdog_for_another_pid_is_ignored(env_daemon: Callable[..., EnvDaemon],
                                             notify: NotifySocket) -> None:
    env_daemon(env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "100000",
                    "WATCHDOG_PID": "1"})
    notify.wait_for("READY=1")
    time.sleep(0.5)
    notify.sock.settimeout(0.2)
    try:
        while True:
            notify.messages.append(notify.sock.recv(4096).decode())
    except TimeoutError:
        pass
    assert not any("WATCHDOG=1" in m.split("\n") for m in notify.messages), notify.messages


def test_socket_activation(env_daemon: Callable[..., EnvDaemon], notify: NotifySocket) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        d = env_daemon(env={"NOTIFY_SOCKET": notify.address}, listen_sock=listener)
        notify.wait_for("READY=1")
        code, reply = send(d.port, message("activated@client.test"))
        assert code == 250, reply
        assert "socket from systemd" in d.log()
        assert "LISTEN_FDS" not in d.log()
    finally:
        listener.close()


# --- SIGTERM: drain ---------------------------------------------------------------------------


def test_sigterm_under_load_loses_nothing_acknowledged(
    env_daemon: Callable[..., EnvDaemon], notify: NotifySocket
) -> None:
    import smtplib

    d = env_daemon(env={"NOTIFY_SOCKET": notify.address})
    notify.wait_for("READY=1")
    acked: list[str] = []
    lock = threading.Lock()
    stopping = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stopping.is_set() or i == 0:
            try:
                with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as s:
                    s.ehlo("load.test")
                    for _ in range(5):
                        mid = f"load-{n}-{i}@client.test"
                        i += 1
                        s.sendmail("load@client.test", ["support@example.com"], message(mid))
                        with lock:
                            acked.append(mid)  # sendmail returned: the 250 was received
            except (smtplib.SMTPException, OSError):
                return

    # A transaction held in DATA across the signal, and an idle session.
    held = socket.create_connection(("127.0.0.1", d.port), timeout=20)
    idle = socket.create_connection(("127.0.0.1", d.port), timeout=20)
    for sock in (held, idle):
        assert read_reply(sock).startswith("220")
        sock.sendall(b"EHLO held.test\r\n")
        assert read_reply(sock).startswith("250")
    for command in (b"MAIL FROM:<held@client.test>", b"RCPT TO:<support@example.com>"):
        held.sendall(command + b"\r\n")
        assert read_reply(held).startswith("250")
    held.sendall(b"DATA\r\n")
    assert read_reply(held).startswith("354")
    held_mid = "held-in-data@client.test"
    body = message(held_mid)
    held.sendall(body[: len(body) // 2])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert d.proc is not None
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1")
    stopping.set()

    # New sessions are told why and closed; so are idle ones.
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as late:
        assert read_reply(late).startswith("421 4.3.2"), "a new session during the drain"
    assert read_reply(idle).startswith("421 4.3.2")
    idle.close()
    # The transaction in DATA finishes and gets its 250.
    held.sendall(body[len(body) // 2:] + b".\r\n")
    reply = read_reply(held)
    assert reply.startswith("250 2.0.0"), reply
    acked.append(held_mid)
    held.sendall(b"QUIT\r\n")
    held.close()
    for t in threads:
        t.join(30)
    assert d.proc.wait(30) == 0
    assert time.monotonic() - t0 < 5 + 2  # shutdown_seconds = 5 in the test config
    assert len(acked) > 150

    d.start()  # the restart processes whatever the stop left in the spool
    d.wait_idle()
    stored = stored_message_ids(d.data_dir)
    missing = [m for m in acked if stored.get(m) != 1]
    assert not missing, (missing[:5], len(missing))
    assert len(set(acked)) == len(acked)


# --- SIGHUP: reload ---------------------------------------------------------------------------


RELOAD_CONFIG = """
[branding]
company_name = "Acme Support"
signature = {signature}
"""


def ack_text(stub: RelayStub, count: int) -> str:
    msg = stub.wait_for(count, timeout=20)[count - 1].message
    body = msg.get_body(("plain",))  # type: ignore[attr-defined]
    assert body is not None
    return str(body.get_content())


def rewrite(d: Daemon, old: str, new: str) -> None:
    text = d.config.read_text()
    assert old in text
    d.config.write_text(text.replace(old, new))


@pytest.mark.parametrize("process", ["inline", "separate"])
def test_sighup_reloads_signature_and_keeps_old_config_when_broken(
    env_daemon: Callable[..., EnvDaemon], notify: NotifySocket, relay_stub: RelayStub,
    process: str,
) -> None:
    """The reload reaches the pipeline, in the daemon's process or in its own."""
    d = env_daemon(relay_section(relay_stub.port)
                   + RELOAD_CONFIG.format(signature='"Signature one"')
                   + f'\n[pipeline]\nprocess = "{process}"\n',
                   env={"NOTIFY_SOCKET": notify.address})
    notify.wait_for("READY=1")
    assert d.proc is not None
    send(d.port, message("hup-1@client.test", "one@customer.test"))
    assert "Signature one" in ack_text(relay_stub, 1)

    # A valid change: the new signature, a new mailbox, and a setting that needs a restart.
    rewrite(d, '"Signature one"', '"Signature two"')
    rewrite(d, '"help@help.example.org"]', '"help@help.example.org", "billing@example.com"]')
    rewrite(d, 'hostname = "mx.test.example"', 'hostname = "mx2.test.example"')
    mark = len(notify.messages)
    d.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", after=mark)
    notify.wait_for("READY=1", after=reloading)
    assert "reloaded configuration from" in d.log()
    assert "[server] hostname changed" in d.log()
    code, reply = send(d.port, message("hup-2@client.test", "two@customer.test"),
                       rcpts=("billing@example.com",))
    assert code == 250, reply
    text = ack_text(relay_stub, 2)
    assert "Signature two" in text and "Signature one" not in text

    # A broken file: logged with file and key, the daemon keeps running on the last good one.
    rewrite(d, '"Signature two"', "42")
    mark = len(notify.messages)
    d.proc.send_signal(signal.SIGHUP)
    notify.wait_for("READY=1", after=notify.wait_for("RELOADING=1", after=mark))
    assert d.proc.poll() is None
    failed = [line for line in d.log().splitlines() if "reload failed" in line]
    assert len(failed) == 1, d.log()
    assert "[branding] signature" in failed[0] and str(d.config) in failed[0]
    send(d.port, message("hup-3@client.test", "three@customer.test"))
    assert "Signature two" in ack_text(relay_stub, 3)
    assert d.stop() == 0


def test_connection_survives_reload(env_daemon: Callable[..., EnvDaemon],
                                    notify: NotifySocket) -> None:
    import smtplib

    d = env_daemon(env={"NOTIFY_SOCKET": notify.address})
    notify.wait_for("READY=1")
    assert d.proc is not None
    with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as s:
        s.ehlo("client.test")
        s.sendmail("a@client.test", ["support@example.com"], message("before-hup@client.test"))
        d.proc.send_signal(signal.SIGHUP)
        notify.wait_for("READY=1", after=notify.wait_for("RELOADING=1"))
        s.sendmail("a@client.test", ["support@example.com"], message("after-hup@client.test"))
    d.wait_idle()
    stored = stored_message_ids(d.data_dir)
    assert stored.get("before-hup@client.test") == stored.get("after-hup@client.test") == 1


# --- logs -------------------------------------------------------------------------------------


def test_json_log_lines_carry_the_queue_id(env_daemon: Callable[..., EnvDaemon]) -> None:
    d = env_daemon('\n[log]\nformat = "json"\n')
    code, reply = send(d.port, message("json-log@client.test"))
    assert code == 250
    qid = queue_id_of(reply)
    d.audit_for(qid)
    d.stop()
    lines = [line for line in d.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    about = [r for r in records if r.get("queue_id") == qid]
    loggers = {r["logger"] for r in about}
    assert {"mailgate.smtp", "mailgate.pipeline"} <= loggers, about


def test_text_log_lines_carry_the_queue_id(env_daemon: Callable[..., EnvDaemon]) -> None:
    import smtplib

    d = env_daemon()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as s:
        s.ehlo("client.test")
        s.mail("x@client.test")
        code, _ = s.rcpt("nobody@example.com")
        assert code == 550
    code, reply = send(d.port, message("text-log@client.test"))
    qid = queue_id_of(reply)
    d.audit_for(qid)
    d.stop()
    lines = d.log().splitlines()
    assert all(line[:2] == "20" and line[10] == "T" for line in lines), lines  # time first
    assert any(f"queue_id={qid} queued" in line for line in lines)
    assert any("refused RCPT 'nobody@example.com'" in line and "queue_id=" in line
               and "queue_id=-" not in line for line in lines)


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("mailgate.test", logging.ERROR, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_formatters_keep_one_event_on_one_line() -> None:
    forged = _record("queue_id=%s refused RCPT %s", "Q1", "x@y\r\nINFO mailgate: forged")
    text = TextFormatter(journal=False).format(forged)
    assert "\n" not in text and "\\r\\nINFO mailgate: forged" in text
    assert TextFormatter(journal=True).format(forged).startswith("<3>ERROR mailgate.test: ")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        failed = _record("outbound_id=%d failed", 7)
        failed.exc_info = sys.exc_info()
    line = TextFormatter(journal=False).format(failed)
    assert "\n" not in line and "ValueError: bad | thing" in line
    assert "Traceback (most recent call last): |" in line
    doc = json.loads(JsonFormatter().format(failed))
    assert doc["outbound_id"] == 7 and "ValueError" in doc["exc"] and doc["level"] == "ERROR"
    tagged = json.loads(JsonFormatter().format(_record("spooled", queue_id="Q9", ticket_id=3)))
    assert (tagged["queue_id"], tagged["ticket_id"], tagged["message"]) == ("Q9", 3, "spooled")
    assert TextFormatter(journal=True).format(_record("spooled", queue_id="Q9")).endswith(
        "queue_id=Q9 spooled")
