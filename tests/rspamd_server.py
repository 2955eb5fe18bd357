"""A real rspamd (Debian's package) on loopback for the spam tests and the benchmarks, with a
configuration of its own in a temporary directory.

Input: a directory to work in (trusted) and the address of a DNS server on loopback (the tests'
dnslib server: every name NXDOMAIN at once). Output: an rspamd normal worker on
`127.0.0.1:<free port>`, started in a few seconds, stopped (with all its processes) by `stop()`.

The configuration is Debian's (`/etc/rspamd`: every module and its scores), with our
`LOCAL_CONFDIR`, `DBDIR`, `RUNDIR` and `LOGDIR` in the work directory, and:
- only the normal worker (no controller, no proxy), one process;
- DNS asked only of the loopback server, so RBL, SURBL, SPF, DKIM, DMARC, map downloads and
  every other network look-up end at once, on this machine; fuzzy_check, rbl, asn and phishing
  off; no Redis (the modules that need it switch themselves off);
- no hyperscan and a short TLD list, so that start-up takes seconds, not minutes of compiling;
- a test rule, `MAILGATE_TEST_SCORE`: a message with the header `X-Mailgate-Test-Score: N`
  gets N added to its score, so a test can land a message between the thresholds exactly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
MARKER_HEADER = "X-Mailgate-Test-Score"
MARKER_SYMBOL = "MAILGATE_TEST_SCORE"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
TLDS = ("com", "org", "net", "edu", "gov", "io", "de", "fr", "uk", "co.uk", "nl", "eu", "info",
        "example", "test", "invalid", "localhost")

_TOP = """\
.include "$CONFDIR/common.conf"
options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}
logging {
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "notice";
}
worker "normal" {
    bind_socket = "127.0.0.1:%(port)d";
    mime = true;
    count = 1;
}
"""
_OPTIONS = """\
dns {
    nameserver = ["%(dns)s"];
    timeout = 1s;
    retransmits = 1;
}
disable_hyperscan = true;
url_tld = "%(tld)s";
filters = "chartable,dkim,regexp";
"""
_LUA = """\
rspamd_config:register_symbol({
  name = '%(symbol)s',
  score = 1.0,
  group = 'mailgate_test',
  description = 'mailgate test: the score given in the %(header)s header',
  callback = function(task)
    local value = task:get_header('%(header)s')
    local n = value and tonumber(value)
    if n then
      return true, n
    end
    return false
  end
})
"""


def available() -> bool:
    return os.access(RSPAMD, os.X_OK)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RspamdServer:
    def __init__(self, workdir: Path, dns: str) -> None:
        self.workdir = workdir
        self.dns = dns
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "log" / "rspamd.log"

    def _write_config(self) -> Path:
        w = self.workdir
        for sub in ("local.d", "override.d", "db", "run", "log"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        (w / "tld.dat").write_text("\n".join(TLDS) + "\n")
        (w / "local.d" / "options.inc").write_text(
            _OPTIONS % {"dns": self.dns, "tld": w / "tld.dat"})
        for module in ("rbl", "fuzzy_check", "asn", "phishing", "rspamd_update"):
            (w / "override.d" / f"{module}.conf").write_text("enabled = false;\n")
        (w / "rspamd.local.lua").write_text(
            _LUA % {"symbol": MARKER_SYMBOL, "header": MARKER_HEADER})
        config = w / "rspamd.conf"
        config.write_text(_TOP % {"port": self.port})
        return config

    def start(self, timeout: float = 60.0) -> RspamdServer:
        self.port = _free_port()
        config = self._write_config()
        w = self.workdir
        cmd = [RSPAMD, "-f", "-c", str(config), "--var", f"LOCAL_CONFDIR={w}",
               "--var", f"DBDIR={w / 'db'}", "--var", f"RUNDIR={w / 'run'}",
               "--var", f"LOGDIR={w / 'log'}"]
        if os.geteuid() == 0:
            cmd.insert(2, "-i")  # run the workers as root too (a test machine, loopback only)
        with (w / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rspamd exited with {self.proc.returncode}:\n{self.log()}")
            if self.ping():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rspamd did not answer on {self.url} in {timeout:.0f}s\n{self.log()}")

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:
                return resp.read().strip() == b"pong"
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """SIGTERM to the main process, then whatever is left of its process group."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # the group holds only the processes this rspamd started (start_new_session)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log(self) -> str:
        parts = []
        for path in (self.workdir / "stdout.log", self.log_path):
            if path.exists():
                parts.append("\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(parts)

    def __enter__(self) -> RspamdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
