"""The authenticate stage: who really sent this message — DKIM, ARC, SPF and DMARC.

Input: a raw inbound message and its SMTP envelope (untrusted), and `AuthSettings` (trusted
configuration). Output: an `AuthResult` with the verdict on the From address (`pass`, `fail`,
`none`), its reason, the Authentication-Results header to prepend, and each method's details.
`strip_forged_results` removes the Authentication-Results fields that claim our authserv-id
before the message is stored (RFC 8601 §5). Imports only the foundation (`mailgate.model`) and
third-party libraries: dkimpy, pyspf, dnspython, authres, publicsuffixlist.

    auth = Authenticator(AuthSettings(authserv_id="mx.help.example.com"))
    result = await auth.authenticate(raw, "192.0.2.1", "mail.example.org",
                                     "jane@example.org", "example.org")
    stored = result.header_bytes() + strip_forged_results(raw, "mx.help.example.com")
"""

from mailgate.auth.authenticator import (
    DEFAULT_TRUSTED_ARC_SEALERS,
    Authenticator,
    AuthResult,
    AuthSettings,
)
from mailgate.auth.results import strip_forged_results

__all__ = [
    "DEFAULT_TRUSTED_ARC_SEALERS",
    "AuthResult",
    "AuthSettings",
    "Authenticator",
    "strip_forged_results",
]
