"""The outbound stage: templates rendered into mail, suppression of automatic mail to robots,
DKIM signing, and the relay worker that delivers the outbox through the smarthost.

Input: tickets and messages from the store (their text is untrusted: templates autoescape it).
Output: RFC 5322 messages in the outbox, and delivery results recorded on each outbox row.
"""
