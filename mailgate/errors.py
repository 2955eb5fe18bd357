"""The error hierarchy shared by every layer.

Input: none. Output: exception classes. `UserError` and its subclasses carry a one-line message
meant for a person (the CLI prints it and exits non-zero, no traceback); `TemporaryFailure` means
"defer and retry"; `PermanentFailure` means "hold for an administrator". Stdlib only.
"""


class MailgateError(Exception):
    """Base of every error mailgate raises on purpose."""


class UserError(MailgateError):
    """A mistake by the person running mailgate: shown as one line, exit status 1."""


class ConfigError(UserError):
    """The configuration is invalid; the message names the file and the key."""


class NotFound(UserError):
    """A ticket, message or spool entry named by the user does not exist."""


class TemporaryFailure(MailgateError):
    """Processing failed for a reason that may go away: retry later."""


class PermanentFailure(MailgateError):
    """Processing can never succeed as things are: hold the message with this reason."""
