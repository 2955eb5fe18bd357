"""DKIM: signing outgoing mail, and making the key that signs it.

Input: `sign` takes a complete RFC 5322 message that mailgate rendered itself (trusted to be
well-formed; header values may carry customer text, which signing only hashes) and the configured
`Dkim` (domain, selector, key file: trusted, written by the administrator or by `keygen`).
`keygen` and `dns_txt_value` take arguments typed by a person (validated: a bad selector or domain
is a `UserError` with one line). Output: `sign` returns the same bytes with a `DKIM-Signature:`
header prepended (rsa-sha256, relaxed/relaxed, over the identity headers that are present);
`keygen` writes an RSA key (PKCS#1 PEM, mode 0600) to `<data_dir>/dkim/<selector>.private`
(another domain's: `<data_dir>/dkim/<domain>/<selector>.private`) and
returns it with the DNS TXT record to publish; `dns_txt_value` gives the record's value for an
existing key, for comparison with what DNS serves.

Failures of `sign`: `TemporaryFailure` when the key cannot be read or parsed (the administrator
can fix it; the mail waits), `PermanentFailure` when the message itself cannot be signed (no From
header). The key file is read again only when its mtime or size changes.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailgate.config import Dkim
from mailgate.errors import PermanentFailure, TemporaryFailure, UserError
from mailgate.store.files import fsync_dir

# Signed when present, in this order (RFC 6376 §5.4.1 and what replies need to thread).
SIGNED_HEADERS: tuple[str, ...] = (
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To",
    "References", "MIME-Version", "Content-Type", "Auto-Submitted",
)
MIN_BITS = 1024
MAX_BITS = 8192
TXT_CHUNK = 255  # longest character-string in a DNS TXT record

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z", re.IGNORECASE)

_key_lock = threading.Lock()
_key_cache: dict[Path, tuple[tuple[int, int], bytes]] = {}


# --- signing ----------------------------------------------------------------------------------


def _private_key_pem(path: Path) -> bytes:
    """The key file's bytes, cached by (path, mtime, size)."""
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        with _key_lock:
            cached = _key_cache.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        pem = path.read_bytes()
    except OSError as exc:
        raise TemporaryFailure(
            f"cannot read DKIM key {path}: {exc.strerror or exc}"
        ) from None
    with _key_lock:
        _key_cache[path] = (stamp, pem)
    return pem


def sign(raw: bytes, dkim: Dkim) -> bytes:
    """`raw` with a DKIM-Signature header prepended, signed by `dkim.domain`/`dkim.selector`."""
    try:
        headers, _body = dkimpy.rfc822_parse(raw)
    except dkimpy.MessageFormatError as exc:
        raise PermanentFailure(f"cannot DKIM-sign this message: {exc}") from None
    present = {name.lower() for name, _value in headers}
    include = [h.lower().encode() for h in SIGNED_HEADERS if h.lower().encode() in present]
    if b"from" not in present:
        raise PermanentFailure("cannot DKIM-sign a message without a From header")
    key = _private_key_pem(dkim.key_file)
    linesep = b"\r\n" if b"\r\n" in raw else b"\n"
    try:
        signature = dkimpy.sign(
            raw,
            dkim.selector.encode("ascii"),
            dkim.domain.encode("ascii"),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=b"rsa-sha256",
            include_headers=include,
            linesep=linesep,
        )
    except (dkimpy.KeyFormatError, dkimpy.ParameterError) as exc:
        raise TemporaryFailure(
            f"DKIM key {dkim.key_file} cannot sign (not an RSA private key in PEM?): {exc}"
        ) from None
    except dkimpy.MessageFormatError as exc:
        raise PermanentFailure(f"cannot DKIM-sign this message: {exc}") from None
    return signature + raw


# --- keys and DNS -----------------------------------------------------------------------------


def check_selector(selector: str) -> str:
    if not _LABEL.match(selector):
        raise UserError(
            f"not a valid DKIM selector (one DNS label: letters, digits, '-'): {selector!r}"
        )
    return selector


def check_domain(domain: str) -> str:
    """The domain in lower-case ASCII (IDNA for non-ASCII names), or UserError."""
    name = domain.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise UserError(f"not a domain name: {domain!r}") from None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise UserError(f"not a domain name: {domain!r}")
    return name


def _txt_value(public_key: rsa.RSAPublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def dns_record(selector: str, domain: str, txt_value: str) -> str:
    """One zone-file line; the value split into quoted strings of at most 255 characters."""
    chunks = [txt_value[i:i + TXT_CHUNK] for i in range(0, len(txt_value), TXT_CHUNK)]
    quoted = " ".join(f'"{chunk}"' for chunk in chunks)
    return f"{selector}._domainkey.{domain}. IN TXT {quoted}"


def dns_txt_value(key_path: Path) -> str:
    """`v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>` for the private key at `key_path`."""
    try:
        pem = Path(key_path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read DKIM key {key_path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UserError(f"{key_path}: not an RSA private key")
    return _txt_value(key.public_key())




def _write_private(path: Path, pem: bytes, force: bool) -> None:
    """Write `pem` to `path` with mode 0600, atomically; never replace a file unless `force`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the file appeared meanwhile
            except FileExistsError:
                raise UserError(f"{path} already exists; refusing to overwrite it") from None
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def keygen(
    data_dir: Path, selector: str, domain: str, bits: int = 2048, force: bool = False,
    per_domain: bool = False,
) -> tuple[Path, str]:
    """Generate an RSA key for `selector`/`domain`; return its path and the DNS TXT record line.
    The key is `<data_dir>/dkim/<selector>.private`, or with `per_domain` (a key for a domain
    other than the first, `[[dkim]]`) `<data_dir>/dkim/<domain>/<selector>.private`, so two
    domains may use the same selector."""
    selector = check_selector(selector)
    domain = check_domain(domain)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise UserError(f"key size must be between {MIN_BITS} and {MAX_BITS} bits, got {bits}")
    directory = Path(data_dir) / "dkim"
    if per_domain:
        directory = directory / domain
    path = directory / f"{selector}.private"
    if path.exists() and not force:
        raise UserError(f"{path} already exists; refusing to overwrite it")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1: what dkimpy parses
        serialization.NoEncryption(),
    )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(path, pem, force)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path, dns_record(selector, domain, _txt_value(key.public_key()))
