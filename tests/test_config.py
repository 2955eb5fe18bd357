"""Bad configuration: `mailgate` exits non-zero with one line naming the key and the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """
[server]
listen = "127.0.0.1:2599"
[storage]
data_dir = "data"
[mail]
domains = ["example.com"]
mailboxes = ["support@example.com"]
"""


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mailgate", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (GOOD.replace("[server]", "[server]\nlisten_port = 25"), "[server] listen_port"),
        (GOOD.replace('listen = "127.0.0.1:2599"', "listen = 2599"), "[server] listen"),
        (GOOD + "\n[colours]\nred = 1\n", "[colours]"),
        (GOOD.replace('"support@example.com"', '"support@other.test"'), "[mail] mailboxes"),
        (GOOD.replace("[server]", "[server]\nmax_recipients = \"fifty\""),
         "[server] max_recipients"),
        (GOOD + '\n[[agents]]\nname = "Bob"\n', "[[agents]] #1 email"),
        (GOOD.replace("[mail]", "[mail"), "invalid TOML"),
        (GOOD + "\n[relay]\ndata_timeout = 0\n", "[relay] data_timeout"),
        (GOOD + '\n[relay]\ntimeout = "30s"\n', "[relay] timeout"),
        (GOOD.replace("[server]", '[server]\ntls_cert = "cert.pem"'), "[server] tls_cert"),
        (GOOD.replace("[server]", '[server]\ntls_cert = "c.pem"\ntls_key = "k.pem"'),
         "[server] tls_cert: file not found"),
        (GOOD + '\n[admin]\nlisten = "127.0.0.1:8099"\ntls_key = "k.pem"\n',
         "[admin] tls_cert: tls_cert and tls_key must be set together"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "mailgate.toml"
    cfg.write_text(text)
    for args in (("--config", str(cfg), "check-config"), ("--config", str(cfg), "serve")):
        result = run(*args, cwd=tmp_path)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert str(cfg) in lines[0] and key in lines[0], lines[0]
        assert "Traceback" not in result.stderr


def test_config_search_order(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text(GOOD)
    assert run("check-config", cwd=tmp_path).returncode == 0  # ./mailgate.toml
    other = tmp_path / "elsewhere.toml"
    other.write_text(GOOD.replace("max", "max"))
    r = run("check-config", cwd=tmp_path, env={"MAILGATE_CONFIG": str(other)})
    assert r.returncode == 0 and str(other) in r.stdout
    r = run("--config", str(tmp_path / "missing.toml"), "check-config", cwd=tmp_path,
            env={"MAILGATE_CONFIG": str(other)})
    assert r.returncode == 1 and "missing.toml: config file not found" in r.stderr


def test_repo_default_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    r = run("--config", str(root / "mailgate.toml"), "check-config", cwd=root)
    assert r.returncode == 0, r.stderr


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "mailgate.toml"
        cfg.write_text(GOOD.replace("2599", str(port)))
        r = run("--config", str(cfg), "serve", cwd=tmp_path)
    assert r.returncode == 1
    assert "cannot listen on 127.0.0.1" in r.stderr and "[server] listen" in r.stderr
    assert "Traceback" not in r.stderr
