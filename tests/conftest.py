"""Shared fixtures: a real mailgate daemon on a free loopback port, with its own config and data
directory under pytest's tmp_path, and helpers to talk SMTP to it and read its CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dns_server import DnsTestServer
from pgserver import NOT_INSTALLED, PgServer, find_bindir
from relay_stub import RelayStub
from sdnotify_listener import NotifySocket

from mailgate.cli import cli
from mailgate.model import Envelope
from mailgate.outbound.dkim_sign import keygen
from mailgate.store.audit import IncomingAudit, record_incoming
from mailgate.store.db import open_db, transaction

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_DNS: list[DnsTestServer] = []


def shared_dns() -> DnsTestServer:
    """One loopback DNS server with no records for every daemon whose test brings none."""
    if not _DNS:
        _DNS.append(DnsTestServer().start())
    return _DNS[0]


def write_config(directory: Path, port: int, extra: str = "", server_extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "mailgate.toml"
    floor = "" if "min_free_bytes" in server_extra else "min_free_bytes = 0"
    relay = "" if "[relay]" in extra else '[relay]\nhost = "127.0.0.1"\nport = 1'  # nobody there
    auth = "" if "[auth]" in extra else (  # DNS on loopback only: an empty zone (NXDOMAIN)
        f'[auth]\nnameservers = ["{shared_dns().address}"]\ndns_timeout = 2')
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
hostname = "mx.test.example"
{floor}
shutdown_seconds = 5
{server_extra}

[storage]
data_dir = "data"

[mail]
domains = ["example.com", "help.example.org"]
mailboxes = ["support@example.com", "sales@example.com", "help@help.example.org"]

{relay}

{auth}

[[agents]]
name = "Alice Agent"
email = "alice@example.com"
{extra}
"""
    )
    return path


class Daemon:
    """A `mailgate serve` subprocess."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.data_dir = config.parent / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config.parent / "daemon.log"

    def start(self, timeout: float = 20.0, max_open_files: int | None = None) -> None:
        """Start `mailgate serve`; `max_open_files` sets its RLIMIT_NOFILE (fd exhaustion)."""
        log = self.log_path.open("ab")

        def limits() -> None:
            if max_open_files is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailgate", "--config", str(self.config), "serve"],
            stdout=log, stderr=log, cwd=self.config.parent, preexec_fn=limits,
        )
        self.wait_listening(timeout)

    def wait_listening(self, timeout: float) -> None:
        """Return once the started daemon accepts connections on its port."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"daemon did not listen in time:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def store(self) -> Any:
        """The daemon's store, wherever its config puts it (SQLite or PostgreSQL); each
        `execute` commits on its own. The caller closes it."""
        from mailgate.config import load_config
        from mailgate.store.connect import open_store

        return open_store(load_config(self.config).database)

    def run_cli(self, *args: str, expect: int = 0) -> Any:
        """`mailgate --config … ARGS` in this process: click's result (stdout, stderr)."""
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args])
        assert result.exit_code == expect, (result.output, result.exception)
        return result

    def cli(self, *args: str, expect: int = 0) -> str:
        """What the command printed, stdout and stderr as a terminal shows them."""
        return str(self.run_cli(*args, expect=expect).output)

    def json(self, *args: str) -> Any:
        return json.loads(self.run_cli(*args, "--json").stdout)

    def wait_idle(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the spool has nothing incoming or active; return the stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.json("stats")
            spool = stats["spool"]
            if spool["incoming"] == 0 and spool["active"] == 0:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"spool not drained: {stats}\n{self.log()}")
            time.sleep(0.05)

    def audit_for(self, queue_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.json("audit", "incoming", "--queue-id", queue_id)
            if rows:
                return rows[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no audit row for {queue_id}\n{self.log()}")
            time.sleep(0.05)


# Tests whose daemons run on both engines: once on the embedded SQLite and once with
# `[storage] database` naming a fresh database of the suite's PostgreSQL (skipped under one line
# without its binaries): every daemon test of the threading, organization/rules and outbound
# modules, and any other test marked `both_engines`. On PostgreSQL the relay and the scheduler
# are also tested by test_multinode_outbound.py, the pipeline's store by test_pg_store.py,
# several daemons by test_multinode.py.
BOTH_ENGINES_MODULES = {"test_threading", "test_orgs_rules", "test_outbound"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_engines: the test's daemons run on SQLite and on"
                            " PostgreSQL (conftest.py)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    if (metafunc.module.__name__ in BOTH_ENGINES_MODULES
            or metafunc.definition.get_closest_marker("both_engines")):
        metafunc.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for the embedded SQLite; else the URL of a fresh PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database(at_head=True)
    yield url
    server.drop_database(url)


def on_backend(cfg: Path, url: str | None) -> Path:
    """The config at `cfg` with its store in the database at `url` (None: SQLite)."""
    if url is not None:
        cfg.write_text(cfg.read_text().replace(
            'data_dir = "data"', f'data_dir = "data"\ndatabase = "{url}"', 1))
    return cfg


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    """A socket standing in for systemd's NOTIFY_SOCKET."""
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def make_daemon(tmp_path: Path, backend: str | None) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def factory(extra: str = "", server_extra: str = "", name: str = "d") -> Daemon:
        port = free_port()
        cfg = on_backend(write_config(tmp_path / name, port, extra, server_extra), backend)
        d = Daemon(cfg, port)
        d.start()
        started.append(d)
        return d

    yield factory
    for d in started:
        d.stop()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


def queue_id_of(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    assert "queued as" in text, text
    return text.rsplit(" ", 1)[-1].strip()


os.environ.pop("MAILGATE_CONFIG", None)


def send(port: int, data: bytes | str, mail_from: str = "customer@client.test",
         rcpts: tuple[str, ...] = ("support@example.com",)) -> tuple[int, str]:
    """One SMTP transaction; returns the reply to DATA (code, text)."""
    import smtplib

    if isinstance(data, str):
        data = data.encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        code, msg = s.mail(mail_from)
        assert code == 250, msg
        for r in rcpts:
            code, msg = s.rcpt(r)
            assert code == 250, (r, code, msg)
        code, msg = s.data(data)
        return code, msg.decode()


def record_forwarding_confirmation(data_dir: Path, *, code: str, address: str, link: str,
                                   subject: str) -> None:
    """A Gmail forwarding confirmation as the classifier records it (classification lands in
    parallel; the row is written through the store, as the pipeline writes it)."""
    db = open_db(data_dir / "mailgate.db")
    env = Envelope(f"FWD{time.time_ns()}", time.time(), "127.0.0.1", "mx.google.test",
                   "forwarding-noreply@google.test", ("support@example.com",), 1000)
    with transaction(db) as conn:
        record_incoming(conn, IncomingAudit(
            env, "forwarding_confirmation", reason="Gmail forwarding confirmation",
            from_addr="forwarding-noreply@google.test", subject=subject,
            classification="forwarding_confirmation",
            details={"provider": "gmail", "code": code, "link": link, "address": address},
        ))
    db.close()


def crlf(data: bytes) -> bytes:
    """Corpus files mostly have LF line endings; SMTP clients send CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


# --- outbound: a real aiosmtpd relay and daemons wired to it ---------------------------------


@pytest.fixture
def relay() -> Iterator[RelayStub]:
    stub = RelayStub(port=free_port())
    stub.start()
    yield stub
    stub.stop()


@pytest.fixture
def relay_stub(relay: RelayStub) -> RelayStub:
    """The same relay, under the name the ops and setup tests use."""
    return relay


def relay_section(port: int) -> str:
    """A `[relay]` table for a stub relay on `port` that retries quickly."""
    return (f'\n[relay]\nhost = "127.0.0.1"\nport = {port}\nretry_base_seconds = 0.3\n'
            f"retry_max_seconds = 1\ntimeout = 5\n")


def outbound_config(relay_port: int, extra: str = "", dkim_key: Path | None = None) -> str:
    dkim_section = ""
    if dkim_key is not None:
        dkim_section = (f'\n[dkim]\ndomain = "example.com"\nselector = "s1"\n'
                        f'key_file = "{dkim_key}"\n')
    return relay_section(relay_port) + f"""
[branding]
company_name = "Acme Support"
header = "Acme helps you"
footer = "Acme Inc, 1 Road, Town"
signature = "The Acme support team"
primary_color = "#ff6600"
{dkim_section}
{extra}
"""


@pytest.fixture
def out_daemon(make_daemon: Callable[..., Daemon], relay: RelayStub, tmp_path: Path
               ) -> Callable[..., Daemon]:
    def factory(extra: str = "", with_dkim: bool = False) -> Daemon:
        key = None
        if with_dkim:
            key, _ = keygen(tmp_path / "keys", "s1", "example.com")
        return make_daemon(extra=outbound_config(relay.port, extra, key))

    return factory


def wait_outgoing(d: Daemon, predicate: Callable[[list[dict]], bool], timeout: float = 20.0
                  ) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = d.json("audit", "outgoing")
        if predicate(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"outgoing audit never matched: {rows}\n{d.log()}")
        time.sleep(0.1)




@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """One PostgreSQL for the whole session (tests/pgserver.py), started on first use. Without
    PostgreSQL's binaries every test that uses it is skipped, all under one summary line (see
    pytest_runtest_makereport below)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(NOT_INSTALLED)
    server = PgServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PgServer) -> str:
    """The session's PostgreSQL: the URL of its maintenance database (`postgres`)."""
    return postgres_server.url()


@pytest.fixture
def pg_at_head(postgres_server: PgServer) -> Iterator[str]:
    """A fresh database with mailgate's schema at head, as a daemon's first start makes it."""
    url = postgres_server.create_database(at_head=True)
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def pg_database(postgres_server: PgServer) -> Iterator[str]:
    """A fresh empty database for one test: its URL (postgresql://postgres@127.0.0.1:…/…)."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """A test skipped for want of PostgreSQL is reported at this file rather than at the test
    (pytest's default for a skip raised by a fixture), so that pytest's summary folds all of
    them into one line: 'SKIPPED [N] tests/conftest.py: PostgreSQL not installed …'."""
    report = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and NOT_INSTALLED in str(longrepr[2]):
        report.longrepr = (__file__, None, longrepr[2])
    return report
