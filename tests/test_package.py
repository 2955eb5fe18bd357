"""mailgate installed like a package, as a new user installs it: the wheel is built from a copy
of the source tree, installed (not editable) into a fresh virtualenv, and run from a temporary
directory that is not the repository: `mailgate init --non-interactive` → `mailgate serve` →
one mail over SMTP → the acknowledgement, rendered from the built-in templates and sent by the
built-in default workflow, reaches a real aiosmtpd relay (tests/relay_stub.py).

Real parts only: pip builds and installs the wheel (build isolation and the dependencies come
from the package index, through pip's cache), the daemon is the installed `mailgate` program,
DNS is the loopback stub. Never skipped: a CI without pip or the index fails here, loudly.
The durations of the steps are printed (`pytest -s tests/test_package.py`).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, Daemon, free_port, queue_id_of, shared_dns
from relay_stub import RelayStub

from mailgate.store.db import REVISIONS

# What the wheel must carry besides the code (mailgate/builtin, read with importlib.resources;
# the migrations, which Alembic finds by path).
PACKAGE_DATA = [
    *(f"mailgate/builtin/templates/{kind}.{ext}"
      for kind in ("base", "new_ticket_ack", "agent_reply", "assignee_notification")
      for ext in ("html", "txt")),
    "mailgate/builtin/templates/canned/thanks.txt",
    "mailgate/builtin/templates/canned/more_information.txt",
    "mailgate/builtin/automations.toml",
    "mailgate/builtin/systemd/mailgate.service",
    "mailgate/builtin/systemd/mailgate.socket",
    # The store's Alembic migrations, run from the installed package.
    "mailgate/store/migrations/env.py",
    "mailgate/store/migrations/script.py.mako",
    "mailgate/store/migrations/versions/0001_baseline_v11.py",
    "mailgate/store/migrations/versions/0002_several_nodes.py",
    "mailgate/store/migrations/versions/0004_merge_split.py",
    "mailgate/store/migrations/versions/0005_agent_accounts.py",
    "mailgate/store/migrations/versions/0006_archive_import.py",
    "mailgate/store/migrations/versions/0007_data_actions.py",
    "mailgate/store/migrations/versions/0008_webhooks.py",
]
# Not part of a source tree that pip should see: runtime state, venvs, caches, old builds.
NOT_SOURCE = {".git", ".venv", "data", "build", "dist", ".pytest_cache", ".ruff_cache"}


def _copy_source(dest: Path) -> Path:
    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(directory) == ROOT:
            skip |= NOT_SOURCE & set(names)
        return skip

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 300
         ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result


def _clean_env() -> dict[str, str]:
    """The environment without anything that would point Python or mailgate at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "MAILGATE_CONFIG", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.mark.timeout(900)  # a cold pip cache downloads every dependency once
def test_wheel_in_a_fresh_venv_acknowledges_the_first_mail(tmp_path: Path,
                                                           relay: RelayStub) -> None:
    env = _clean_env()
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    # 1. The wheel, built by pip from a copy of the tree, carries the package data.
    source = _copy_source(tmp_path / "src")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist,
          source], cwd=tmp_path, env=env)
    (wheel,) = dist.glob("mailgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in PACKAGE_DATA if n not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    timings["build"] = time.monotonic() - t0

    # 2. A fresh virtualenv; pip (this one, pointed at it) installs the wheel, not editable.
    t1 = time.monotonic()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=env)
    python, program = venv / "bin" / "python", venv / "bin" / "mailgate"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", wheel],
         cwd=tmp_path, env=env)
    timings["install"] = time.monotonic() - t1

    # 3. From a directory that is not the repository: init, then serve.
    t2 = time.monotonic()
    home = tmp_path / "home"
    home.mkdir()
    where = _run([python, "-c", "import mailgate; print(mailgate.__file__)"], home, env).stdout
    assert where.startswith(str(venv)) and not where.startswith(str(ROOT)), where
    # The packaged Alembic migrations run from the installed package (no alembic.ini).
    migrated = _run([python, "-c", "from mailgate.store.engine import make_engine;"
                     " from mailgate.store.upgrade import upgrade;"
                     " print(upgrade(make_engine('sqlite:///schema.db')))"], home, env).stdout
    assert migrated.strip() == f"revision {REVISIONS[-1]} (head)", migrated
    port = free_port()
    _run([program, "init", "--non-interactive", "--domain", "example.com",
          "--listen", f"127.0.0.1:{port}", "--relay-host", "127.0.0.1",
          "--relay-port", str(relay.port), "--no-relay-starttls", "--agent-email",
          "alice@example.com", "--data-dir", "data", "--dkim-selector", "s1",
          "--admin-listen", ""], cwd=home, env=env)
    config = home / "mailgate.toml"
    with config.open("a") as f:  # DNS stays on loopback: an empty zone
        f.write(f'\n[auth]\nnameservers = ["{shared_dns().address}"]\ndns_timeout = 2\n')
    checked = _run([program, "check-config"], cwd=home, env=env).stdout
    assert "2 rules" in checked, checked  # the built-in default workflow
    doctor = subprocess.run([program, "doctor", "--timeout", "2", "--dns-timeout", "0.5",
                             "--nameserver", shared_dns().address],
                            cwd=home, env=env, capture_output=True, text=True, timeout=120)
    lines = {line[6:].split(" ", 1)[0]: line for line in doctor.stdout.splitlines()}
    assert lines["templates"].startswith("ok ") and str(venv) in lines["templates"], doctor.stdout
    assert lines["rules"].startswith("ok ") and "built-in default workflow" in lines["rules"]

    log = (home / "serve.log").open("wb")
    daemon = Daemon(config, port)
    daemon.proc = subprocess.Popen([program, "serve"], cwd=home, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    daemon.log_path = home / "serve.log"
    try:
        daemon.wait_listening(30)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("jane@customer.test")
            smtp.rcpt("support@example.com")
            code, reply = smtp.data(
                b"From: Jane Doe <jane@customer.test>\r\nTo: support@example.com\r\n"
                b"Subject: My printer is on fire\r\nMessage-ID: <pkg-1@customer.test>\r\n"
                b"\r\nPlease help.\r\n")
        assert code == 250, reply
        queue_id_of(reply)
        (ack,) = relay.wait_for(1, timeout=60)
        timings["init_to_ack"] = time.monotonic() - t2
    finally:
        assert daemon.stop() == 0, daemon.log()
        log.close()
    assert ack.rcpt_tos == ("jane@customer.test",), daemon.log()
    message = ack.message
    assert message["Subject"] == "[#1] Re: My printer is on fire"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["DKIM-Signature"] is not None  # the key init made
    text = message.get_body(("plain",)).get_content()
    assert "We received your request #1" in text  # the built-in new_ticket_ack.txt
    assert message.get_body(("html",)) is not None

    # 4. An installation that lost its package data says so, instead of "ok".
    t3 = time.monotonic()
    site = Path(where).parent / "builtin"
    shutil.rmtree(site / "templates")
    (site / "automations.toml").unlink()
    broken = subprocess.run([program, "check-config"], cwd=home, env=env,
                            capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1 and broken.stderr.count("\n") == 1, broken.stderr
    assert "built-in default workflow is missing" in broken.stderr
    doctor = subprocess.run([program, "doctor", "--timeout", "2", "--dns-timeout", "0.5",
                             "--nameserver", shared_dns().address],
                            cwd=home, env=env, capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 1
    lines = {line[6:].split(" ", 1)[0]: line for line in doctor.stdout.splitlines()}
    assert lines["templates"].startswith("FAIL") and "reinstall mailgate" in lines["templates"]
    assert lines["rules"].startswith("FAIL") and "reinstall mailgate" in lines["rules"]
    timings["broken_install"] = time.monotonic() - t3

    timings["total"] = time.monotonic() - t0
    print("\npackage test timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
