"""Setting mailgate up: the systemd unit, `mailgate init` and `mailgate doctor`.

Real parts: the unit goes through `systemd-analyze verify` when the machine has it; init writes
real files that `mailgate check-config` then reads; doctor talks SMTP to a real aiosmtpd relay
(tests/relay_stub.py), to a real mailgate daemon, and DNS to a small real UDP DNS server on
loopback that serves the DKIM record (or a wrong one, or nothing at all).
"""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest
from click.testing import CliRunner, Result
from conftest import ROOT, Daemon, free_port
from relay_stub import RelayStub

from mailgate.cli import cli
from mailgate.outbound.dkim_sign import dns_record, dns_txt_value, keygen

# --- the systemd unit -------------------------------------------------------------------------


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: section → key → every value given (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def shipped_unit(name: str) -> str:
    """A unit as `mailgate systemd-unit` prints it from the package (the README's install)."""
    result = run("systemd-unit", name.removeprefix("mailgate."))
    assert result.exit_code == 0, result.output
    assert result.output == (ROOT / "mailgate" / "builtin" / "systemd" / name).read_text()
    return result.output


def test_service_unit_has_what_the_daemon_needs() -> None:
    service = unit_sections(shipped_unit("mailgate.service"))["Service"]

    def one(key: str) -> str:
        assert key in service, key
        return service[key][-1]

    assert one("Type") == "notify"
    assert one("ExecStart") == (
        "/opt/mailgate/.venv/bin/mailgate --config /etc/mailgate/mailgate.toml serve")
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("WatchdogSec") == "30"
    assert one("Restart") == "on-failure"
    assert one("User") == "mailgate"
    assert one("StateDirectory") == "mailgate"
    for key, value in (("ProtectSystem", "strict"), ("ProtectHome", "true"),
                       ("PrivateTmp", "true"), ("NoNewPrivileges", "true"),
                       ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
                       ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE")):
        assert one(key) == value, key
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in service["SystemCallFilter"]
    assert int(one("TimeoutStopSec")) > 30  # longer than the default shutdown_seconds
    socket_unit = unit_sections(shipped_unit("mailgate.socket"))
    assert socket_unit["Socket"]["FileDescriptorName"] == ["smtp"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    program = Path(sys.executable).parent / "mailgate"
    assert program.exists()
    for name in ("mailgate.service", "mailgate.socket"):
        text = shipped_unit(name)
        (tmp_path / name).write_text(text.replace("/opt/mailgate/.venv/bin/mailgate",
                                                  str(program)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "mailgate.service"),
         str(tmp_path / "mailgate.socket")],
        capture_output=True, text=True, timeout=120,
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if "mailgate." in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


# --- init -------------------------------------------------------------------------------------


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


def init_args(config: Path, relay_port: int, *extra: str) -> list[str]:
    return ["--config", str(config), "init", "--non-interactive",
            "--domain", "help.example.com", "--hostname", "mx.help.example.com",
            "--listen", f"127.0.0.1:{free_port()}",
            "--relay-host", "127.0.0.1", "--relay-port", str(relay_port),
            "--agent-email", "alice@example.com", "--agent-name", "Alice Agent",
            "--data-dir", "data", "--dkim-selector", "s1", *extra]


def test_init_non_interactive_writes_a_valid_config_and_prints_dns(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "mailgate.toml"
    result = run(*init_args(config, 2526))
    assert result.exit_code == 0, result.output
    out = result.output
    data = config.parent / "data"
    key = data / "dkim" / "s1.private"
    p_value = dns_txt_value(key).split("p=")[1]
    quoted = dns_record("s1", "help.example.com", dns_txt_value(key)).split(" IN TXT ")[1]
    lines = out.splitlines()
    assert any(" ".join(line.split()) == "help.example.com. IN MX 10 mx.help.example.com."
               for line in lines)
    assert any("help.example.com." in line and '"v=spf1 a:mx.help.example.com ~all"' in line
               for line in lines)
    dkim_line = next(line for line in lines if "s1._domainkey.help.example.com." in line)
    assert dkim_line.endswith(quoted) and p_value[:200] in dkim_line
    assert any("_dmarc.help.example.com." in line and '"v=DMARC1; p=none' in line
               for line in lines)
    assert "Forwarding and POP/IMAP" in out and "mailgate forwarding pending" in out
    assert "Microsoft 365" in out and "Automatic forwarding rules" in out

    checked = run("--config", str(config), "check-config")
    assert checked.exit_code == 0, checked.output
    assert "ok" in checked.output
    for secret in (data / "secret.key", key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "[[agents]]" in config.read_text()


def test_init_with_relay_login_keeps_the_password_out_of_the_config(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    result = run(*init_args(config, 587, "--relay-username", "bot@example.com",
                            "--relay-password", 'p"a\\ss word'))
    assert result.exit_code == 0, result.output
    text = config.read_text()
    assert "p\"a" not in text and 'password_file = "data/relay.password"' in text
    assert (tmp_path / "data" / "relay.password").read_text() == 'p"a\\ss word'
    assert run("--config", str(config), "check-config").exit_code == 0


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text("# mine\n")
    result = run(*init_args(config, 2526))
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"mailgate: {config} already exists; refusing to overwrite it (use --force)")
    assert config.read_text() == "# mine\n"
    assert not (tmp_path / "data").exists()  # refused before making anything

    first = run(*init_args(config, 2526, "--force"))
    assert first.exit_code == 0, first.output
    key = tmp_path / "data" / "dkim" / "s1.private"
    published = dns_txt_value(key)
    again = run(*init_args(config, 2526, "--force"))
    assert again.exit_code == 0, again.output
    assert dns_txt_value(key) == published  # a key that may be in DNS already is kept
    assert "kept the existing key" in again.output


@pytest.mark.parametrize("args, message", [
    ((), "--domain is required with --non-interactive"),
    (("--domain", "not a domain"), "not a domain name: 'not a domain'"),
    (("--domain", "example.com", "--mailbox", "help@other.example"),
     "'help@other.example' is not in the support domain example.com"),
    (("--domain", "example.com", "--relay-username", "u"),
     "--relay-username and --relay-password go together"),
])
def test_init_bad_flags_are_one_line(tmp_path: Path, args: tuple[str, ...], message: str
                                     ) -> None:
    result = run("--config", str(tmp_path / "m.toml"), "init", "--non-interactive", *args)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"mailgate: {message}"
    assert not (tmp_path / "m.toml").exists()


def test_init_asks_step_by_step(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    answers = [
        "",                       # no public address of the company's own
        "Example Help",           # the company name
        "not a domain",           # asked again
        "help.example.com",
        "support@help.example.com, sales@help.example.com",
        "",                       # host name: the default mx.help.example.com
        f"127.0.0.1:{free_port()}",
        "127.0.0.1",              # relay
        "2526",
        "n",                      # no STARTTLS
        "",                       # no relay login
        "alice@example.com",
        "Alice Agent",
        "data",
    ]
    result = run("--config", str(config), "init", input="\n".join(answers) + "\n")
    assert result.exit_code == 0, result.output
    assert "not a domain name" in result.output  # the bad answer was explained, then re-asked
    text = config.read_text()
    assert 'mailboxes = ["support@help.example.com", "sales@help.example.com"]' in text
    assert 'hostname = "mx.help.example.com"' in text and "starttls = false" in text
    assert run("--config", str(config), "check-config").exit_code == 0


# --- doctor -----------------------------------------------------------------------------------


class DnsStub:
    """A real DNS server on loopback UDP: TXT answers from `records`, NXDOMAIN otherwise;
    with `silent`, it reads queries and never answers."""

    def __init__(self, records: dict[str, str], silent: bool = False) -> None:
        self.records = records
        self.silent = silent
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if self.silent:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            name = query.question[0].name.to_text()
            if name in self.records:
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT",
                                                           self.records[name]))
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def installed(tmp_path: Path, relay_stub: RelayStub) -> Path:
    """A configuration made by `mailgate init`, its relay the stub."""
    config = tmp_path / "etc" / "mailgate.toml"
    result = run(*init_args(config, relay_stub.port))
    assert result.exit_code == 0, result.output
    return config


def published(config: Path, key: Path | None = None) -> dict[str, str]:
    key = key or config.parent / "data" / "dkim" / "s1.private"
    record = dns_record("s1", "help.example.com", dns_txt_value(key))
    return {"s1._domainkey.help.example.com.": record.split(" IN TXT ", 1)[1]}


def doctor(config: Path, *args: str) -> tuple[int, list[str]]:
    result = run("--config", str(config), "doctor", "--timeout", "5", *args)
    assert "Traceback" not in result.output
    return result.exit_code, result.output.splitlines()


def line_of(lines: list[str], name: str) -> str:
    found = [line for line in lines if line[6:].startswith(name + " ")]
    assert len(found) == 1, (name, lines)
    return found[0]


def test_doctor_passes_against_a_local_relay(installed: Path) -> None:
    dns_stub = DnsStub(published(installed))
    try:
        code, lines = doctor(installed, "--nameserver", dns_stub.address)
        assert code == 0, lines
        for name in ("config", "templates", "rules", "data_dir", "smtp", "relay", "dkim"):
            assert line_of(lines, name).startswith("ok "), lines
        assert "new_ticket_ack" in line_of(lines, "templates")
        assert "built-in default workflow" in line_of(lines, "rules")
        assert "EHLO 250" in line_of(lines, "relay")
        admin = line_of(lines, "admin")
        assert admin.startswith("warn") and "fix:" in admin  # no token until the first start
        (installed.parent / "data" / "admin.token").write_text("x" * 43 + "\n")
        code, lines = doctor(installed, "--nameserver", dns_stub.address)
        assert code == 0 and line_of(lines, "admin").startswith("ok "), lines
        assert lines[-1].startswith("doctor: no check failed")
    finally:
        dns_stub.close()


def test_doctor_fails_naming_the_fix_when_the_relay_is_down(installed: Path,
                                                            relay_stub: RelayStub) -> None:
    relay_stub.stop()
    dns_stub = DnsStub(published(installed))
    try:
        code, lines = doctor(installed, "--nameserver", dns_stub.address)
    finally:
        dns_stub.close()
    assert code == 1
    relay = line_of(lines, "relay")
    assert relay.startswith("FAIL") and f"127.0.0.1:{relay_stub.port}" in relay
    assert "fix: start the relay, or set [relay] host and port in" in relay
    assert line_of(lines, "config").startswith("ok ")


def test_doctor_dkim_record_wrong_missing_or_unreachable(installed: Path,
                                                         tmp_path: Path) -> None:
    other, _ = keygen(tmp_path / "other", "s1", "help.example.com")
    wrong = DnsStub(published(installed, other))
    try:
        code, lines = doctor(installed, "--nameserver", wrong.address)
    finally:
        wrong.close()
    assert code == 1
    dkim = line_of(lines, "dkim")
    assert dkim.startswith("FAIL") and "publishes a different key" in dkim
    assert "fix: publish s1._domainkey.help.example.com. IN TXT" in dkim

    missing = DnsStub({})
    try:
        code, lines = doctor(installed, "--nameserver", missing.address)
    finally:
        missing.close()
    assert code == 1 and "has no TXT record" in line_of(lines, "dkim")

    silent = DnsStub({}, silent=True)
    try:
        t0 = time.monotonic()
        code, lines = doctor(installed, "--nameserver", silent.address, "--dns-timeout", "1")
        elapsed = time.monotonic() - t0
    finally:
        silent.close()
    assert code == 0, lines  # a timeout is a warning, not a failure
    dkim = line_of(lines, "dkim")
    assert dkim.startswith("warn") and "DNS not reachable" in dkim
    assert elapsed < 5


def test_doctor_broken_config_is_one_failed_check(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text('[server]\nlisten = "nowhere"\n')
    code, lines = doctor(config)
    assert code == 1
    assert lines[0].startswith("FAIL  config") and "[server] listen" in lines[0]
    assert "fix: edit" in lines[0]


def test_doctor_fails_with_the_fix_when_a_template_or_the_rules_do_not_load(
        installed: Path) -> None:
    templates = installed.parent / "templates"
    templates.mkdir()
    (templates / "new_ticket_ack.html").write_text("<p>{{ ticket.no_such_field }}</p>\n")
    (templates / "new_ticket_ack.txt").write_text("{{ ticket.id }}\n")
    text = installed.read_text()
    installed.write_text(text + '\n[templates]\ndir = "templates"\n')
    code, lines = doctor(installed, "--timeout", "1", "--dns-timeout", "0.5")
    assert code == 1
    tmpl = line_of(lines, "templates")
    assert tmpl.startswith("FAIL") and "new_ticket_ack" in tmpl
    assert f"{templates / 'new_ticket_ack.html'}:1:" in tmpl and "no_such_field" in tmpl
    assert "fix: correct the file and line named" in tmpl
    assert line_of(lines, "rules").startswith("ok ")

    # A disabled kind is never sent, so it is not rendered; a broken rules file fails.
    (installed.parent / "rules.toml").write_text(
        '[[automations]]\nname = "x"\nwhen = "ticket_created"\n'
        'if = { subject_containz = "a" }\nthen = { priority = "high" }\n')
    installed.write_text(text + '\n[templates]\ndir = "templates"\n'
                         '[templates.new_ticket_ack]\nenabled = false\n'
                         '[rules]\nfile = "rules.toml"\n')
    code, lines = doctor(installed, "--timeout", "1", "--dns-timeout", "0.5")
    assert code == 1
    assert line_of(lines, "templates").startswith("ok ")
    rules = line_of(lines, "rules")
    assert rules.startswith("FAIL") and "rules.toml" in rules and "subject_containz" in rules
    assert "fix:" in rules and "rules check" in rules


def test_doctor_sees_a_running_mailgate_on_the_port(daemon: Daemon) -> None:
    code, lines = doctor(daemon.config)
    assert code == 1  # the test config's relay (port 1) is down
    smtp = line_of(lines, "smtp")
    assert smtp.startswith("ok ") and "bound by a running mailgate" in smtp
    assert "EHLO" in smtp and "250" in smtp
    assert line_of(lines, "relay").startswith("FAIL")  # the test config's relay: port 1


def test_doctor_port_taken_by_something_else(tmp_path: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    config = tmp_path / "m.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[storage]\ndata_dir = "d"\n')
    try:
        code, lines = doctor(config, "--timeout", "1")
    finally:
        squatter.close()
    smtp = line_of(lines, "smtp")
    assert code == 1 and smtp.startswith("FAIL") and "fix:" in smtp
