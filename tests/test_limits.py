"""Session limits as Postfix has them, against a running daemon: sessions in all and per client,
the idle timeout, junk commands, the DATA deadline (slowloris), and the PROXY protocol."""

from __future__ import annotations

import socket
import time

import pytest
from conftest import queue_id_of
from test_data import Client, _head


def _banner(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, sock.recv(512)


def test_sessions_in_all_are_limited(make_daemon) -> None:
    d = make_daemon(server_extra="max_sessions = 3")
    held = [_banner(d.port) for _ in range(3)]
    assert all(b.startswith(b"220") for _, b in held)
    sock, banner = _banner(d.port)
    assert banner.startswith(b"421 4.7.0"), banner
    assert sock.recv(512) == b""  # and closed
    held.pop()[0].close()
    time.sleep(0.2)
    again, banner = _banner(d.port)
    assert banner.startswith(b"220"), banner
    for s, _ in [*held, (again, b"")]:
        s.close()


def test_sessions_per_client_address_are_limited(make_daemon) -> None:
    d = make_daemon(server_extra="max_sessions_per_client = 2")
    held = [_banner(d.port) for _ in range(2)]
    sock, banner = _banner(d.port)
    assert banner.startswith(b"421 4.7.0") and b"your address" in banner, banner
    for s, _ in held:
        s.close()
    sock.close()


def test_an_idle_session_is_closed(make_daemon) -> None:
    d = make_daemon(server_extra="idle_timeout = 1")
    sock, banner = _banner(d.port)
    assert banner.startswith(b"220")
    sock.settimeout(10)
    started = time.monotonic()
    assert sock.recv(512) == b""  # closed by the server
    assert time.monotonic() - started < 5
    sock.close()


def test_noops_cannot_keep_a_session_alive_for_ever(make_daemon) -> None:
    d = make_daemon(server_extra="junk_command_limit = 5")
    c = Client(d.port)
    for _ in range(5):
        assert c.command(b"NOOP").startswith(b"250")
    assert c.command(b"NOOP").startswith(b"421 4.7.0")
    assert c.sock.recv(512) == b""
    c.close()


def test_a_slow_data_transfer_is_cut_off_and_audited(make_daemon) -> None:
    """Slowloris: a byte now and then keeps a plain idle timer happy; the DATA deadline
    (idle_timeout plus the bytes received at min_data_rate) does not."""
    d = make_daemon(server_extra="idle_timeout = 2\nmin_data_rate = 1000")
    c = Client(d.port)
    c.begin()
    c.sock.sendall(_head("slow"))
    started = time.monotonic()
    reply = b""
    while time.monotonic() - started < 15:
        try:
            c.sock.sendall(b"x")
        except OSError:
            break
        c.sock.settimeout(0.5)
        try:
            reply = c.sock.recv(512)
        except TimeoutError:
            continue
        break
    assert reply.startswith(b"421 4.4.2"), reply
    assert time.monotonic() - started < 8
    c.close()
    d.wait_idle()
    rows = d.json("audit", "incoming", "--action", "rejected")
    assert [r["reason"] for r in rows] == ["DATA too slow (timeout or below min_data_rate)"]
    assert d.json("tickets", "list") == []


def test_proxy_protocol_gives_the_real_client_address(make_daemon) -> None:
    d = make_daemon(server_extra="proxy_protocol = true")
    for header in (b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\n",
                   b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"  # v2, TCP over IPv4
                   + bytes([198, 51, 100, 9]) + bytes([10, 0, 0, 1])
                   + (40001).to_bytes(2, "big") + (25).to_bytes(2, "big")):
        sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        sock.sendall(header)
        c = Client.__new__(Client)
        c.sock, c.buffer = sock, b""
        assert c.reply().startswith(b"220")
        c.begin()
        reply = c.data(_head(f"proxied-{header[:5].hex()}") + b"hello\r\n")
        assert reply.startswith(b"250"), reply
        c.close()
        row = d.audit_for(queue_id_of(reply.decode()))
        assert row["client_ip"] == ("192.0.2.7" if header.startswith(b"PROXY") else
                                    "198.51.100.9")
    # Without the header the connection is not served.
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=15)
    sock.sendall(b"EHLO client.test\r\n")
    assert not sock.recv(512).startswith(b"250")
    sock.close()


@pytest.mark.parametrize("key, value", [("bare_newline", '"sometimes"'),
                                        ("max_sessions", "-1"), ("idle_timeout", "0")])
def test_bad_limit_settings_name_the_key(tmp_path, key: str, value: str) -> None:
    from conftest import write_config

    from mailgate.config import load_config
    from mailgate.errors import ConfigError

    path = write_config(tmp_path, 2525, server_extra=f"{key} = {value}")
    with pytest.raises(ConfigError, match=rf"\[server\] {key}"):
        load_config(path)
