"""The threading stage: which ticket does a message belong to, and how was that decided.

Input: a `ParsedMail` (untrusted headers) and a look-up function from a Message-ID to the
ticket that sent or received it (passed in by the pipeline, so this stage never touches the
store). Output: a `ThreadMatch`: a ticket id and the method (`in-reply-to`, `references`), or
no ticket and the method `new`. First match wins.
"""

from mailgate.threading.mailbox import mailbox_of
from mailgate.threading.match import Lookups, find_ticket, our_addresses

__all__ = ["Lookups", "find_ticket", "mailbox_of", "our_addresses"]
