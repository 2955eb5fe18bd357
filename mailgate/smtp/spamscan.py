"""Asking rspamd about a message after DATA and before the 250, and what its answer means.

Input: the message as the spool holds it while it is received — its bytes, or the path of its
file once it is big (streamed to rspamd, never read into memory) —, the envelope (client
address, HELO, sender, recipients, queue id: untrusted, cleaned of control characters before
they become HTTP headers), and `[spam]`. Output: a `SpamVerdict` — refuse, quarantine or accept
by the configured scores, or, when rspamd cannot answer (down, too slow, a reply that is not
its JSON), `unscanned` or `tempfail` as `[spam] on_error` says. rspamd's answer is trusted as far
as it parses: a number for the score, names and numbers for the symbols.

The protocol is rspamd's HTTP `/checkv2` (POST the message; the envelope in the `IP`, `Helo`,
`From`, `Rcpt`, `Queue-Id` and `MTA-Name` headers), on the event loop with aiohttp and the
`[spam] timeout` for the whole exchange. A refusal rspamd forces whatever the score (a
pre-result: the GTUBE test pattern, an antivirus hit, a `force_actions` rule) counts as a score
at `reject_score`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailgate.config import Spam
from mailgate.model import (
    SPAM_ACCEPT,
    SPAM_QUARANTINE,
    SPAM_REJECT,
    SPAM_TEMPFAIL,
    SPAM_UNSCANNED,
    Envelope,
    SpamVerdict,
)
from mailgate.ops import metrics

if TYPE_CHECKING:  # aiohttp is imported on the first scan: a daemon without [spam] starts
    import aiohttp  # without it (about 0.2 s)

log = logging.getLogger("mailgate.smtp")

CHECK_PATH = "/checkv2"
MAX_ANSWER = 4 * 1024 * 1024  # bytes of JSON we read back; rspamd's answers are a few KB
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ScanError(Exception):
    """rspamd could not give an answer we can use; the message says why, in one line."""


@dataclass(frozen=True)
class RspamdAnswer:
    score: float
    action: str  # rspamd's own action for this score ("no action", "add header", "reject" ...)
    symbols: tuple[tuple[str, float], ...]  # by weight: the largest |score| first
    forced: bool = False  # rspamd refused it before scoring (a pre-result)
    message: str = ""  # rspamd's SMTP message, when it has one


def parse_answer(data: Any) -> RspamdAnswer:
    """rspamd's `/checkv2` JSON → an answer. Raises ScanError for anything else."""
    if not isinstance(data, Mapping):
        raise ScanError("rspamd answered something other than a JSON object")
    score = data.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise ScanError(f"rspamd's answer has no usable score: {str(score)[:80]!r}")
    action = data.get("action")
    if not isinstance(action, str):
        action = ""
    found = data.get("symbols")
    symbols: list[tuple[str, float]] = []
    if isinstance(found, Mapping):
        for name, sym in found.items():
            value = sym.get("score", 0.0) if isinstance(sym, Mapping) else 0.0
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                value = 0.0
            symbols.append((_CONTROL.sub("", str(name))[:100], round(float(value), 3)))
    symbols.sort(key=lambda s: (-abs(s[1]), s[0]))
    messages = data.get("messages")
    message = ""
    if isinstance(messages, Mapping) and isinstance(messages.get("smtp_message"), str):
        message = _CONTROL.sub(" ", messages["smtp_message"])[:200]
    forced = bool(data.get("is_skipped")) and action == "reject"
    return RspamdAnswer(round(float(score), 3), action, tuple(symbols), forced, message)


def decide(answer: RspamdAnswer, settings: Spam) -> SpamVerdict:
    """The configured scores applied to rspamd's answer (each threshold: at or above)."""
    score = answer.score
    found = f"rspamd score {score:g}"
    if answer.forced:
        action = SPAM_REJECT
        reason = f"{found}, refused by rspamd itself ({answer.message or 'a pre-result'})"
    elif score >= settings.reject_score:
        action, reason = SPAM_REJECT, f"{found} >= reject_score {settings.reject_score:g}"
    elif score >= settings.quarantine_score:
        action = SPAM_QUARANTINE
        reason = f"{found} >= quarantine_score {settings.quarantine_score:g}"
    else:
        action, reason = SPAM_ACCEPT, f"{found} < quarantine_score {settings.quarantine_score:g}"
    no_autoreply = ""
    if answer.forced or score >= settings.no_autoreply_score:
        no_autoreply = (f"spam score {score:g} is at or above [spam] no_autoreply_score"
                        f" ({settings.no_autoreply_score:g})")
    return SpamVerdict(action=action, score=score, symbols=answer.symbols,
                       rspamd_action=answer.action, reason=reason, no_autoreply=no_autoreply)


def failed(error: str, settings: Spam) -> SpamVerdict:
    """rspamd could not answer: take the mail unscanned, or ask the client to come back."""
    if settings.on_error == "tempfail":
        return SpamVerdict(action=SPAM_TEMPFAIL,
                           reason=f"spam scanner unavailable ([spam] on_error = \"tempfail\"):"
                                  f" {error}")
    return SpamVerdict(action=SPAM_UNSCANNED, reason=f"not scanned: {error}")


def _clean(value: str) -> str:
    return _CONTROL.sub("", value)[:1000]


def request_headers(env: Envelope, hostname: str) -> list[tuple[str, str]]:
    """The envelope as rspamd's protocol headers (one `Rcpt` per recipient)."""
    headers = [("Queue-Id", _clean(env.queue_id)), ("MTA-Name", _clean(hostname)),
               ("From", _clean(env.mail_from) or "<>")]
    with contextlib.suppress(ValueError):  # not an IP (a unix socket): rspamd goes without
        headers.append(("IP", str(ipaddress.ip_address(env.client_ip))))
    if env.helo:
        headers.append(("Helo", _clean(env.helo)))
    headers += [("Rcpt", _clean(r)) for r in env.rcpt_to]
    return headers


class Scanner:
    """One HTTP client for the daemon's life; `settings` may be replaced (SIGHUP)."""

    def __init__(self, settings: Spam, hostname: str) -> None:
        self.settings = settings
        self.hostname = hostname
        self._session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    async def scan(self, message: bytes | Path, env: Envelope) -> SpamVerdict:
        """Ask rspamd; never raises for rspamd's sake (its failures become the on_error
        verdict)."""
        settings = self.settings
        started = time.perf_counter()
        try:
            answer = await self._ask(settings, message, env)
        except ScanError as exc:
            verdict = failed(str(exc), settings)
            log.warning("queue_id=%s spam scan failed (%s): %s", env.queue_id,
                        settings.on_error, exc)
        else:
            verdict = decide(answer, settings)
            log.info("queue_id=%s spam %s: %s [%s] in %.3fs", env.queue_id, verdict.action,
                     verdict.reason, verdict.symbol_text(8), time.perf_counter() - started)
        metrics.SPAM_SCAN_SECONDS.observe(time.perf_counter() - started)
        metrics.SPAM_VERDICTS.labels(verdict.action).inc()
        return verdict

    async def _ask(self, settings: Spam, message: bytes | Path, env: Envelope) -> RspamdAnswer:
        import aiohttp

        assert settings.rspamd is not None
        url = settings.rspamd.rstrip("/") + CHECK_PATH
        timeout = aiohttp.ClientTimeout(total=settings.timeout)
        headers = request_headers(env, self.hostname)
        try:
            if isinstance(message, Path):
                with message.open("rb") as stream:  # streamed by aiohttp, in chunks
                    return await self._post(url, stream, headers, timeout)
            return await self._post(url, message, headers, timeout)
        except TimeoutError:
            raise ScanError(f"rspamd at {settings.rspamd} did not answer within"
                            f" {settings.timeout:g}s ([spam] timeout)") from None
        except aiohttp.ClientError as exc:
            raise ScanError(f"rspamd at {settings.rspamd}: {_one_line(exc)}") from None
        except OSError as exc:
            raise ScanError(f"cannot read the message for rspamd: {_one_line(exc)}") from None

    async def _post(self, url: str, data: Any, headers: list[tuple[str, str]],
                    timeout: aiohttp.ClientTimeout) -> RspamdAnswer:
        async with self._client().post(url, data=data, headers=headers, timeout=timeout,
                                       allow_redirects=False) as resp:
            body = await resp.content.read(MAX_ANSWER)
            if resp.status != 200:
                text = _one_line(body.decode("utf-8", "replace")) or resp.reason or ""
                raise ScanError(f"rspamd answered HTTP {resp.status}: {text[:200]}")
        try:
            return parse_answer(json.loads(body))
        except ValueError:
            raise ScanError("rspamd's answer is not JSON") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
