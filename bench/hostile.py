"""Hostile mail against the pipeline's stages: time per stage, against benign mail of the size.

Usage: python bench/hostile.py [--timeout 300] [--compare SRC_DIR] [--only NAME ...]

Input: command-line options only; the mails are built here (the inputs of issue 17's ReDoS
findings and issue 11's fuzzer findings, and others found since). `--compare` names another
source tree of mailgate (e.g. a checkout of main: `git archive main | tar -x -C /tmp/main`);
each case then runs under it too, so one run prints before and after. Output: on stdout, per
hostile mail, the seconds each stage took (parse, classify, reply text, threading, render,
DKIM canonicalisation, Authentication-Results reading), the total, and the ratio to a benign
mail of the same size measured in the same run; a case that runs past `--timeout` prints as
such. Each case runs in its own process. Exit status 1 when a hostile mail takes more than
`--max-ratio` times its benign control. Trust: a developer tool; no network, no files written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD = (b"From: Jane <jane@client.test>\r\nTo: support@example.com\r\n"
        b"Message-ID: <hostile@client.test>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n")


def _mail(headers: bytes = b"", body: bytes = b"hello\r\n", ctype: bytes = b"text/plain",
          head: bytes = HEAD) -> bytes:
    return (head + headers + b"Content-Type: " + ctype + b"\r\n\r\n" + body)


def _nested(depth: int) -> bytes:
    out = [HEAD, b"Subject: deep\r\n"]
    for i in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
    out.append(b"Content-Type: text/plain\r\n\r\nthe text\r\n")
    out += [b"--b%d--\r\n" % i for i in reversed(range(depth))]
    return b"".join(out)


def _wide(parts: int) -> bytes:
    out = [HEAD, b'Subject: wide\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n']
    out += [b"--B\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(parts)]
    out.append(b"--B--\r\n")
    return b"".join(out)


def _words(text: bytes, count: int) -> bytes:
    """`count` encoded words of 60 characters, one per folded line: lines stay under SMTP's
    1,000, and decoded (adjacent encoded words join) they are one run of 60 × `count`."""
    return b"\r\n ".join([b"=?utf-8?q?" + text * 60 + b"?="] * count)


# name → (what it is, the mail)
CASES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "ws-header": ("a 122 KB mail whose Subject decodes to 99,000 spaces (issue 17: froze"
                  " everything for 130 s)",
                  lambda: _mail(b"Subject: =?utf-8?q?x?=\r\n " + _words(b"_", 1650)
                                + b"\r\n =?utf-8?q?y?=\r\n")),
    "ws-header-line": ("122 KB of white space on one header line (once long lines pass SMTP)",
                       lambda: _mail(b"Subject: x" + b" " * 122_000 + b"y\r\n")),
    "long-to": ("a 41 KB To: decoding to one token without @ (issue 17: 11 s in threading)",
                lambda: _mail(b"Subject: to\r\n", head=HEAD.replace(
                    b"To: support@example.com", b"To: " + _words(b"a", 690)))),
    "spaces-render": ("20,000 spaces in the subject and a 100,000-space line in the text,"
                      " rendered into the acknowledgement and the assignee notification"
                      " (issue 17: 3 s)",
                      lambda: _mail(b"Subject: =?utf-8?q?hi?=\r\n " + _words(b"_", 334)
                                    + b"\r\n =?utf-8?q?x?=\r\n",
                                    b"Hello" + b" " * 100_000 + b"x\r\n")),
    "nested-divs": ("100,000 nested <div> (issue 17: 74 s in nh3)",
                    lambda: _mail(b"Subject: html\r\n", b"<div>" * 100_000 + b"x"
                                  + b"</div>" * 100_000, b"text/html")),
    "mime-1000": ("MIME nested 1,000 levels (issue 11: RecursionError)", lambda: _nested(1000)),
    "mime-10000-parts": ("10,000 MIME parts (issue 11: 2.4 s)", lambda: _wide(10_000)),
    "open-words": ("a 64 KB subject of encoded words that never end",
                   lambda: _mail(b"Subject: " + b"=?a?q?x " * 8_000 + b"\r\n")),
    "ct-params": ("a Content-Type of 60,000 semicolons inside a quote",
                  lambda: _mail(b"Subject: ct\r\n", ctype=b'text/plain; a="' + b";" * 60_000)),
    "html-comments": ("HTML of 200,000 '<!--'", lambda: _mail(b"Subject: c\r\n",
                                                              b"<!--" * 200_000, b"text/html")),
    "punycode": ("8-bit text declared as charset=punycode",
                 lambda: _mail(b"Subject: p\r\n", b"a" * 60_000 + b"-\xc3\xa9" * 10_000,
                               b"text/plain; charset=punycode")),
    "bounce-phrase": ("a mailer-daemon mail repeating 'this is the ' 20,000 times",
                      lambda: _mail(b"Subject: hi\r\n", b"this is the " * 20_000,
                                    head=HEAD.replace(b"jane@client.test",
                                                      b"mailer-daemon@client.test"))),
    "blank-lines": ("200,000 blank lines (forwarded-mail header search)",
                    lambda: _mail(b"Subject: Fwd: x\r\n", b"\r\n" * 200_000 + b"From: x")),
    "dkim-blanks": ("a DKIM-signed body line of 100,000 blanks (relaxed canonicalisation)",
                    lambda: _mail(b"Subject: d\r\n",
                                  b"x \r\nx" + b" \t" * 50_000 + b"x\r\n")),
    "ar-comments": ("an Authentication-Results of 30,000 nested comments",
                    lambda: _mail(b"Authentication-Results: mx.test; "
                                  + b"(" * 30_000 + b")" * 30_000 + b" dkim=pass\r\n")),
    "bidi-filename": ("an attachment named with bidi overrides (a correctness case)",
                      lambda: _mail(b"Subject: f\r\n", b"data", b"application/pdf; name="
                                    b"\"=?utf-8?q?invoice=E2=80=AEfdp.exe?=\"")),
}


def benign(size: int) -> bytes:
    line = b"Hello, the printer on the third floor is broken again; please send someone.\r\n"
    return _mail(b"Subject: printer\r\n", line * max(1, size // len(line)))


# --- the child: run every stage on one mail -------------------------------------------------


def run_stages(raw: bytes) -> dict[str, float]:
    from mailgate.auth import dkim_speedups
    from mailgate.auth.results import read_recorded
    from mailgate.classify import classify
    from mailgate.config import Branding
    from mailgate.outbound.render import BUILTIN_DIR, Renderer
    if Path("mailgate/parsing").is_dir():  # the child runs in the tree measured
        from mailgate.parsing.parse import parse
        from mailgate.parsing.replytext import reply_text
    else:  # a tree from before the layout of issue 16
        from mailgate.parse import parse  # type: ignore[no-redef]
        from mailgate.replytext import reply_text  # type: ignore[no-redef]
    from mailgate.threading.forwarded import original_of
    from mailgate.threading.match import our_addresses

    times: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = fn()
        times[stage] = time.perf_counter() - start
        return result

    parsed = timed("parse", lambda: parse(raw))
    timed("classify", lambda: classify(parsed, raw, "jane@client.test"))
    timed("reply_text", lambda: reply_text(parsed.text, parsed.html))
    timed("threading", lambda: (our_addresses(parsed, ["support@example.com"],
                                              lambda a: a.endswith("@example.com")),
                                original_of(parsed)))
    renderer = Renderer(BUILTIN_DIR, None, Branding(), {}, ROOT)
    ctx = renderer.sample_context("new_ticket_ack")
    ctx["ticket"] = {**ctx["ticket"], "subject": parsed.subject}
    ctx["customer_message"] = {"subject": parsed.subject, "text": parsed.text,
                               "from": parsed.from_.email}
    timed("render", lambda: (renderer.render("new_ticket_ack", ctx),
                             renderer.render("assignee_notification", ctx)))
    body = raw.split(b"\r\n\r\n", 1)[-1]
    timed("dkim_canon", lambda: dkim_speedups.relaxed_body(body))
    values = parsed.headers.get("authentication-results", ())
    timed("auth_results", lambda: [read_recorded(v) for v in values])
    return times


def child(name: str) -> None:
    raw = benign(int(name.split(":", 1)[1])) if name.startswith("benign:") else CASES[name][1]()
    print(json.dumps({"size": len(raw), "times": run_stages(raw)}))


# --- the parent ------------------------------------------------------------------------------


def measure(name: str, source: Path, timeout: float) -> dict[str, object] | None:
    env = {**os.environ, "PYTHONPATH": str(source)}
    try:
        out = subprocess.run([sys.executable, __file__, "--child", name], env=env,
                             cwd=source, capture_output=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as exc:
        return {"error": exc.stderr.decode(errors="replace").strip().splitlines()[-1:]}
    result: dict[str, object] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def _total(result: dict[str, object] | None) -> float | None:
    if result is None or "times" not in result:
        return None
    times = result["times"]
    assert isinstance(times, dict)
    return float(sum(times.values()))


def _show(result: dict[str, object] | None, timeout: float) -> str:
    if result is None:
        return f"> {timeout:.0f} s (timed out)"
    if "error" in result:
        return f"raised: {result['error']}"
    total = _total(result)
    times = result["times"]
    assert isinstance(times, dict)
    top = sorted(times, key=lambda k: -times[k])[:3]
    parts = ", ".join(f"{k} {times[k]:.3f}" for k in top if times[k] >= 0.1 * (total or 1))
    return f"{total:8.3f} s  ({parts})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--compare", type=Path, help="another mailgate source tree (before)")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--max-ratio", type=float, default=50.0)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    failed = 0
    for name, (what, build) in CASES.items():
        if args.only and name not in args.only:
            continue
        size = len(build())
        control = _total(measure(f"benign:{size}", ROOT, args.timeout)) or 1e-9
        after = measure(name, ROOT, args.timeout)
        print(f"{name}: {what} [{size} bytes]")
        if args.compare:
            print(f"  before  {_show(measure(name, args.compare, args.timeout), args.timeout)}")
        total = _total(after)
        ratio = f"{total / control:.1f}x benign ({control:.3f} s)" if total else "-"
        print(f"  after   {_show(after, args.timeout)}  {ratio}")
        if total is None or total / control > args.max_ratio:
            failed += 1
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
