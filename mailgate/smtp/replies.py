"""Every SMTP reply mailgate composes, named, and enhanced status codes (RFC 3463) for the
replies aiosmtpd composes itself.

Input: a reply line aiosmtpd is about to send. Output: the same reply with an enhanced status
code where it had none, so that every refusal a client sees carries one (for example
`552 Error: Too much mail data` → `552 5.3.4 Message too big for system`). Greeting, EHLO lines
and 354 are left alone, as RFC 2034 wants.
"""

from __future__ import annotations

import re

# --- our own replies --------------------------------------------------------------------------
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
BARE_LINE_END = "550 5.6.0 Message refused: bare CR or LF in DATA (RFC 5321 section 2.3.8)"
MESSAGE_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
DATA_TIMEOUT = "421 4.4.2 Timeout exceeded, closing connection"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
TOO_MANY_SESSIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from your address, try again later"
NO_SPACE = "452 4.3.1 Insufficient system storage, try again later"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
TEMPORARY = "451 4.3.0 Temporary local problem, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down"
BAD_SENDER_SYNTAX = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT_SYNTAX = "501 5.1.3 Bad recipient address syntax"
AUTH_UNAVAILABLE = "502 5.5.1 AUTH not available on this server"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors in this session, closing connection"
SPAM_REFUSED = "550 5.7.1 Message refused as spam"
SCANNER_UNAVAILABLE = "451 4.7.1 Spam scanner unavailable, try again later"
TOO_MANY_UNKNOWN = "421 4.7.0 Too many unknown recipients in this session, closing connection"

_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
_EXACT = {
    "250 OK": "250 2.0.0 OK",
    "221 Bye": "221 2.0.0 Bye",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed maximum message size",
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.6 Line too long (RFC 5321 4.5.3.1.6)",
}
_BY_CODE = {
    "421": "4.3.0", "451": "4.3.0", "452": "4.3.1",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "550": "5.0.0", "552": "5.3.4", "553": "5.1.3",
    "554": "5.0.0", "555": "5.5.4",
}
_PREFIX = re.compile(r"^(\d{3}) (?:Error: |Syntax: )?(.*)$", re.S)



def with_enhanced_code(status: str) -> str:
    if status in _EXACT:
        return _EXACT[status]
    if _ENHANCED.match(status) or status[3:4] == "-":
        return status
    m = _PREFIX.match(status)
    if not m or m.group(1) not in _BY_CODE:
        return status
    code, text = m.groups()
    return f"{code} {_BY_CODE[code]} {text}"
