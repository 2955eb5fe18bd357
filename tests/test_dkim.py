"""DKIM keys and signatures: real RSA keys from `keygen`, verified by dkimpy against a stub DNS
function that serves the TXT record `keygen` printed."""

from __future__ import annotations

import stat
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import dkim as dkimpy
import pytest

from mailgate.config import Dkim
from mailgate.errors import PermanentFailure, TemporaryFailure, UserError
from mailgate.outbound.dkim_sign import dns_txt_value, keygen, sign

DOMAIN = "example.com"
SELECTOR = "mg2024"


def message(body: str = "Hello,\n\nyour ticket is open.\n", **extra: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Support <support@example.com>"
    msg["To"] = "Jane <jane@customer.test>"
    msg["Subject"] = "[#12] My printer is on fire"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = "<t12.abc@example.com>"
    msg["Auto-Submitted"] = "auto-replied"
    for name, value in extra.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def dns_from_record(record: str) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy that serves the TXT record line keygen returned."""
    name = record.split(" ", 1)[0]
    strings = record.split(" IN TXT ", 1)[1]
    value = "".join(part for part in strings.split('"')[1::2])

    def dnsfunc(qname: bytes, timeout: float = 5) -> bytes | None:
        return value.encode() if qname.decode() == name else None

    return dnsfunc


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return keygen(tmp_path_factory.mktemp("data"), SELECTOR, DOMAIN)


def test_keygen_writes_a_private_key_and_a_txt_record(key: tuple[Path, str]) -> None:
    path, record = key
    assert path.name == f"{SELECTOR}.private" and path.parent.name == "dkim"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert record.startswith(f'{SELECTOR}._domainkey.{DOMAIN}. IN TXT "v=DKIM1; k=rsa; p=')
    strings = record.split(" IN TXT ", 1)[1].split('"')[1::2]
    assert len(strings) >= 2 and all(len(s) <= 255 for s in strings)  # 2048 bits: > 255 chars
    assert "".join(strings) == dns_txt_value(path)
    assert not list(path.parent.glob(".*tmp"))


def test_signed_message_verifies_and_tampering_is_detected(key: tuple[Path, str]) -> None:
    path, record = key
    raw = message(In_Reply_To="<m1@customer.test>", References="<m1@customer.test>")
    signed = sign(raw, Dkim(DOMAIN, SELECTOR, path))
    assert signed.startswith(b"DKIM-Signature: ") and signed.endswith(raw)
    header = signed[: len(signed) - len(raw)].decode()
    assert "a=rsa-sha256" in header and "c=relaxed/relaxed" in header
    assert f"d={DOMAIN}" in header and f"s={SELECTOR}" in header
    h_tag = "".join(header.split("h=", 1)[1].split(";", 1)[0].split())
    assert h_tag.split(":") == [
        "from", "to", "subject", "date", "message-id", "in-reply-to", "references",
        "mime-version", "content-type", "auto-submitted",
    ]  # only the headers present: no cc, reply-to
    dnsfunc = dns_from_record(record)
    assert dkimpy.verify(signed, dnsfunc=dnsfunc)

    tampered = signed.replace(b"your ticket is open", b"your ticket is closed")
    assert tampered != signed
    assert not dkimpy.verify(tampered, dnsfunc=dnsfunc)
    tampered_header = signed.replace(b"My printer is on fire", b"Please pay this invoice")
    assert not dkimpy.verify(tampered_header, dnsfunc=dnsfunc)


def test_lf_only_message_still_verifies_after_crlf_conversion(key: tuple[Path, str]) -> None:
    path, record = key
    raw = message().replace(b"\r\n", b"\n")
    signed = sign(raw, Dkim(DOMAIN, SELECTOR, path))
    assert b"\r\n" not in signed
    assert dkimpy.verify(signed.replace(b"\n", b"\r\n"), dnsfunc=dns_from_record(record))


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    path, record = keygen(tmp_path, "sel1", "Example.COM.", bits=1024)
    assert record.startswith('sel1._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=')
    before = path.read_bytes()
    with pytest.raises(UserError, match="already exists") as err:
        keygen(tmp_path, "sel1", "example.com", bits=1024)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before
    path2, record2 = keygen(tmp_path, "sel1", "example.com", bits=1024, force=True)
    assert path2 == path and path.read_bytes() != before and record2 != record
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("selector", "domain"),
    [("bad/sel", "example.com"), ("-sel", "example.com"), ("a.b", "example.com"), ("", "x.com"),
     ("sel", "localhost"), ("sel", "exa mple.com"), ("sel", "a..com"), ("sel", "../etc"),
     ("sel", "x" * 64 + ".com")],
)
def test_keygen_validates_selector_and_domain(tmp_path: Path, selector: str, domain: str) -> None:
    with pytest.raises(UserError):
        keygen(tmp_path, selector, domain, bits=1024)
    assert not (tmp_path / "dkim").exists() or not any((tmp_path / "dkim").iterdir())


def test_sign_failures_are_typed(tmp_path: Path, key: tuple[Path, str]) -> None:
    with pytest.raises(TemporaryFailure, match="cannot read DKIM key"):
        sign(message(), Dkim(DOMAIN, SELECTOR, tmp_path / "missing.private"))
    garbage = tmp_path / "garbage.private"
    garbage.write_text("not a key\n")
    with pytest.raises(TemporaryFailure):
        sign(message(), Dkim(DOMAIN, SELECTOR, garbage))
    no_from = b"To: jane@customer.test\r\nSubject: hi\r\n\r\nbody\r\n"
    with pytest.raises(PermanentFailure, match="From"):
        sign(no_from, Dkim(DOMAIN, SELECTOR, key[0]))
    with pytest.raises(UserError):
        dns_txt_value(garbage)
