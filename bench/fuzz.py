"""The long fuzzing campaign: hostile messages through parse → classify → reply text.

Usage: python bench/fuzz.py [--cases 100000] [--workers 2] [--seed 1] [--small]

Input: command-line options only; the messages come from tests/mail_strategies.py (hypothesis:
random headers with NUL and 8-bit bytes, encoded words with odd charsets, IDNA and punycode
domains, RFC 2231 parameters, nested and colliding multiparts, random bodies, deep HTML, and now
and then a MIME tree hundreds of levels deep or thousands of parts wide). Output: on stdout, the
number of cases, every distinct exception found (type and where; there must be none), how often
a stage fell back to its last-resort path (parse's headers-only answer, classify's "normal",
reply_text's whole text; none either), the rate in cases per second, the slowest case (its
time, size and first bytes), then the timings of two fixed cases: 10,000 MIME parts and MIME
nested 1,000 levels. Exit status 1 when anything raised or fell back. Trust: a developer tool;
workers write their results to a temporary directory, which is removed.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages[record.getMessage()[:80]] += 1


def worker(cases: int, seed: int, small: bool, out: Path) -> None:
    import mail_strategies
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from mailgate.classify import CLASSIFY_FAILED, classify
    from mailgate.parsing.parse import PARSE_FAILED, parse
    from mailgate.parsing.replytext import REPLY_FAILED, reply_text

    if small:
        sizes = mail_strategies.SIZES
        sizes.deep, sizes.wide, sizes.run, sizes.html_depth = 120, 200, 2000, 200
    counter = _Count()
    for name in ("mailgate.replytext", "mailgate.classify"):
        logging.getLogger(name).addHandler(counter)
    errors: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    samples: dict[str, str] = {}
    state = {"n": 0, "slowest": 0.0, "slowest_size": 0, "slowest_head": ""}

    @hypothesis_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(mail_strategies.hostile_messages(),
           st.sampled_from(["", "jane@client.test", "MAILER-DAEMON@mx.test"]))
    def one(raw: bytes, sender: str) -> None:
        state["n"] += 1
        start = time.perf_counter()
        try:
            parsed = parse(raw)
            result = classify(parsed, raw, sender)
            reply_text(parsed.text, parsed.html)
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            errors[key] += 1
            samples.setdefault(key, repr(raw[:300]))
            return
        finally:
            took = time.perf_counter() - start
            if took > state["slowest"]:
                state.update(slowest=took, slowest_size=len(raw), slowest_head=repr(raw[:160]))
        if any(d.startswith(PARSE_FAILED) for d in parsed.defects):
            fallbacks["parse: headers only"] += 1
        if result.reason.startswith(CLASSIFY_FAILED):
            fallbacks["classify: treated as normal"] += 1

    started = time.perf_counter()
    one()
    elapsed = time.perf_counter() - started
    for message, count in counter.messages.items():
        if message.startswith((REPLY_FAILED, CLASSIFY_FAILED)):
            fallbacks[message] += count
    out.write_text(json.dumps({
        "cases": state["n"], "seconds": elapsed, "errors": errors, "samples": samples,
        "fallbacks": fallbacks, "slowest": state["slowest"],
        "slowest_size": state["slowest_size"], "slowest_head": state["slowest_head"],
    }))


def fixed_cases() -> list[tuple[str, float, str]]:
    from mail_strategies import _deep

    from mailgate.classify import classify
    from mailgate.parsing.parse import parse
    from mailgate.parsing.replytext import reply_text

    out = []
    for label, raw in (("10,000 MIME parts", _deep(0, 10_000)),
                       ("MIME nested 1,000 levels", _deep(1000, 1))):
        start = time.perf_counter()
        parsed = parse(raw)
        classify(parsed, raw, "")
        reply_text(parsed.text, parsed.html)
        bounds = [d for d in parsed.defects if "MIME" in d][:1]
        out.append((label, time.perf_counter() - start, "; ".join(bounds) or "no defect"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="the suite's smaller big cases")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.cases, args.seed, args.small, Path(args.worker[1]))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mailgate-fuzz-") as tmp:
        procs = []
        share = -(-args.cases // args.workers)
        for i in range(args.workers):
            out = Path(tmp) / f"worker{i}.json"
            cmd = [sys.executable, __file__, "--cases", str(share), "--seed", str(args.seed + i),
                   "--worker", str(i), str(out)] + (["--small"] if args.small else [])
            procs.append((subprocess.Popen(cmd, cwd=ROOT), out))
        results = []
        for proc, out in procs:
            if proc.wait() != 0 or not out.exists():
                print(f"a worker failed (exit {proc.returncode})")
                return 1
            results.append(json.loads(out.read_text()))
    elapsed = time.perf_counter() - started
    cases = sum(r["cases"] for r in results)
    errors: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
        fallbacks.update(r["fallbacks"])
    slow = max(results, key=lambda r: r["slowest"])
    print(f"cases: {cases} in {elapsed:.0f} s with {args.workers} workers"
          f" ({cases / elapsed:.0f} cases/s)")
    print(f"exceptions: {sum(errors.values())} ({len(errors)} distinct)")
    for key, count in errors.most_common():
        sample = next(r["samples"][key] for r in results if key in r["samples"])
        print(f"  {count:6}  {key}  e.g. {sample[:200]}")
    print(f"last-resort fallbacks: {sum(fallbacks.values())}")
    for key, count in fallbacks.most_common():
        print(f"  {count:6}  {key}")
    print(f"slowest case: {slow['slowest']:.3f} s, {slow['slowest_size']} bytes:"
          f" {slow['slowest_head']}")
    for label, seconds, defect in fixed_cases():
        print(f"{label}: {seconds:.3f} s for parse, classify and reply text ({defect})")
    return 1 if errors or fallbacks else 0


if __name__ == "__main__":
    sys.exit(main())
