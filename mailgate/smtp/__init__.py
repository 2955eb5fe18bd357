"""The network-facing stage: an aiosmtpd server that validates envelopes and spools mail.

Input: SMTP sessions from anyone on the network (untrusted). Output: spool entries, each
acknowledged with 250 only after it is durable. This package never imports the store, the
pipeline or the rules: it does as little as possible and hands over through the spool.
"""
