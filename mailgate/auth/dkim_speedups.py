"""Faster drop-ins for two of dkimpy's internals: the same answers, a fraction of the time.

Input: what dkimpy passes them — header values and message bodies (untrusted bytes), RSA
signatures and public keys from DNS (untrusted) and the digest dkimpy computed. Output: exactly
what dkimpy's own functions return for the same arguments, faster:

- canonicalization (RFC 6376 §3.4): dkimpy runs `re.sub` over every header value and the whole
  body even when there is nothing to change, and its whitespace pattern replaces every single
  space by a single space; the versions here return the input untouched when there is nothing to
  change and only rewrite runs that do change. And dkimpy canonicalizes all the header fields
  and the whole body again for every signature it checks (a DKIM signature and each ARC set):
  "relaxed" here remembers, per thread, its last answer for the very same objects (the same
  `bytes` body; the same name and value objects, in the same order) and gives it again;
- RSA PKCS#1 v1.5 verification: dkimpy does the modular arithmetic in pure Python and re-encodes
  the key on every call; here OpenSSL (through `cryptography`) verifies against the public key,
  built once per key. A signature shorter than the modulus is left-padded as dkimpy's integer
  arithmetic implies; anything OpenSSL cannot take (a tiny key, an over-long signature, an
  unknown hash) goes to dkimpy's own function, so no input gets a different answer.

On a signed, ARC-sealed corpus this takes the authenticate stage from ~1.5 ms to well under a
millisecond a message (bench/auth.py), and takes dkimpy's quadratic trailing-blank pattern out
of reach of hostile mail. `install()` puts them in dkimpy's module namespace, only when the
installed dkimpy is a release they were proved on (`PROVEN_DKIMPY`: tests/test_auth.py compares
them with dkimpy's own functions on random input, in CI); on any other release dkimpy keeps its
own functions and one warning is logged. Signing (mailgate.outbound.dkim_sign) produces the same
bytes either way.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
import threading
from typing import Any

import dkim
import dkim.canonicalization
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

# The dkimpy releases whose internals these replace were read and proved equal on (add a release
# here only after tests/test_auth.py's equivalence tests pass against it).
PROVEN_DKIMPY = ("1.1.8",)

log = logging.getLogger("mailgate.auth")
_warned: set[str] = set()

# A run of blanks before CRLF, matched from the run's start only: from every position of a long
# run not followed by CRLF the plain pattern rescans the run (quadratic in the body).
_TRAILING_WSP = re.compile(rb"(?<![\t ])[\t ]+\r\n")
_WSP_TO_COMPRESS = re.compile(rb"\t[\t ]*| [\t ]+")  # every run but a lone space
_LINE_BREAK = re.compile(rb"\r?\n")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}


def strip_trailing_whitespace(content: bytes) -> bytes:
    if b" \r\n" not in content and b"\t\r\n" not in content:
        return content
    return _TRAILING_WSP.sub(b"\r\n", content)


def compress_whitespace(content: bytes) -> bytes:
    if b"\t" not in content and b"  " not in content:
        return content
    return _WSP_TO_COMPRESS.sub(b" ", content)


def unfold_header_value(content: bytes) -> bytes:
    if b"\n" not in content:
        return content
    return _LINE_BREAK.sub(b"", content)


_last = threading.local()


def relaxed_body(body: bytes) -> bytes:
    last = getattr(_last, "body", None)
    if last is not None and last[0] is body:
        return last[1]
    canon = dkim.canonicalization
    result: bytes = canon.correct_empty_body(canon.strip_trailing_lines(
        compress_whitespace(strip_trailing_whitespace(body))))
    _last.body = (body, result)
    return result


def relaxed_headers(headers: list[Any]) -> list[tuple[bytes, bytes]]:
    fields = [(field[0], field[1]) for field in headers]
    last = getattr(_last, "headers", None)
    if (last is not None and len(last[0]) == len(fields)
            and all(a[0] is b[0] and a[1] is b[1] for a, b in zip(last[0], fields, strict=True))):
        return list(last[1])
    result = [(name.lower().rstrip(), compress_whitespace(unfold_header_value(value)).strip()
               + b"\r\n") for name, value in fields]
    _last.headers = (fields, result)
    return list(result)


@functools.lru_cache(maxsize=256)
def _public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


_CANONICALIZATION = ("strip_trailing_whitespace", "compress_whitespace", "unfold_header_value")
_RELAXED = dkim.canonicalization.Relaxed
# dkimpy's own functions, for the equivalence tests (taken before any install()).
ORIGINALS: dict[str, Any] = {
    name: getattr(getattr(dkim.canonicalization, name), "dkimpy_original",
                  getattr(dkim.canonicalization, name))
    for name in _CANONICALIZATION
}
for _method in ("canonicalize_headers", "canonicalize_body"):
    _current = getattr(_RELAXED, _method)
    ORIGINALS[f"relaxed_{_method[13:]}"] = getattr(_current, "dkimpy_original", _current)
_original_verify = getattr(dkim.RSASSA_PKCS1_v1_5_verify, "dkimpy_original",
                           dkim.RSASSA_PKCS1_v1_5_verify)
ORIGINALS["RSASSA_PKCS1_v1_5_verify"] = _original_verify


def rsassa_pkcs1_v1_5_verify(hash: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    algorithm = _HASHES.get(str(getattr(hash, "name", "")).lower())
    modulus, exponent = public_key["modulus"], public_key["publicExponent"]
    size = (modulus.bit_length() + 7) // 8
    if algorithm is None or len(signature) > size or size < 128:
        return bool(_original_verify(hash, signature, public_key))
    try:
        key = _public_key(modulus, exponent)
        key.verify(signature.rjust(size, b"\0"), hash.digest(), padding.PKCS1v15(),
                   Prehashed(algorithm()))
    except InvalidSignature:
        return False
    except Exception:  # a key OpenSSL will not take: dkimpy's own arithmetic decides
        return bool(_original_verify(hash, signature, public_key))
    return True


FAST: dict[str, Any] = {
    "strip_trailing_whitespace": strip_trailing_whitespace,
    "compress_whitespace": compress_whitespace,
    "unfold_header_value": unfold_header_value,
    "relaxed_headers": relaxed_headers,
    "relaxed_body": relaxed_body,
}
for _name, _fast in FAST.items():
    _fast.dkimpy_original = ORIGINALS[_name]  # type: ignore[attr-defined]
rsassa_pkcs1_v1_5_verify.dkimpy_original = _original_verify  # type: ignore[attr-defined]


def installed_dkimpy() -> str:
    """The installed dkimpy's version ("" when its metadata cannot be found)."""
    try:
        return importlib.metadata.version("dkimpy")
    except importlib.metadata.PackageNotFoundError:
        return ""


def install(version: str | None = None) -> bool:
    """Put the fast versions in dkimpy's namespace when `version` (default: the installed
    dkimpy's) is one of `PROVEN_DKIMPY`; otherwise put dkimpy's own functions back and log
    once why. Idempotent. Returns whether the fast versions are in place."""
    version = installed_dkimpy() if version is None else version
    proven = version in PROVEN_DKIMPY
    chosen = FAST if proven else ORIGINALS
    for name in _CANONICALIZATION:
        setattr(dkim.canonicalization, name, chosen[name])
    _RELAXED.canonicalize_headers = staticmethod(chosen["relaxed_headers"])
    _RELAXED.canonicalize_body = staticmethod(chosen["relaxed_body"])
    dkim.RSASSA_PKCS1_v1_5_verify = (rsassa_pkcs1_v1_5_verify if proven
                                     else ORIGINALS["RSASSA_PKCS1_v1_5_verify"])
    if not proven and version not in _warned:
        _warned.add(version)
        log.warning("dkimpy %s is not a release mailgate's DKIM speed-ups were proved on (%s):"
                    " using dkimpy's own functions (slower on long headers and bodies)",
                    version or "(version unknown)", ", ".join(PROVEN_DKIMPY))
    return proven
