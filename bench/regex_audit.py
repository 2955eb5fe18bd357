"""Every regular expression in mailgate/, checked for super-linear time on hostile text.

Usage: python bench/regex_audit.py [--size 4000] [--limit 4.0] [--show-all]

Input: the source of the installed `mailgate` package (read only): each module-level compiled
pattern (found by importing the module) and each pattern literal passed to a `re` function
(found with `ast`). Output: on stdout, one line per pattern whose time grows faster than its
input on some adversarial string — runs of one character or of a two- or three-character motif
made of the pattern's own literal characters and of the characters that matter in mail (space,
tab, CR, LF, `@`, `<`, `"`, ...) — with the worst growth ratio (time at 4×size / time at size;
linear is about 4, quadratic about 16). Exit status 1 when a pattern's ratio exceeds `--limit`
times linear. Trust: a developer tool; it only imports mailgate and runs its patterns.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import itertools
import re
import sys
import time
from pathlib import Path

import mailgate

PKG = Path(mailgate.__file__).resolve().parent
MAIL_CHARS = " \t\r\n@<>\"'()[]:;,.-=?_*#/\\|+!a0A\u00e9\u200b\u3000>~{}%&^`$"
FLAG_NAMES = {"re.I": re.I, "re.IGNORECASE": re.I, "re.M": re.M, "re.MULTILINE": re.M,
              "re.S": re.S, "re.DOTALL": re.S, "re.X": re.X, "re.VERBOSE": re.X,
              "re.A": re.A, "re.ASCII": re.A}


def _flags(node: ast.expr | None) -> int:
    if node is None:
        return 0
    text = ast.unparse(node)
    value = 0
    for part in text.replace("(", " ").replace(")", " ").split("|"):
        value |= FLAG_NAMES.get(part.strip(), 0)
    return value


Found = tuple[str, "re.Pattern[str] | re.Pattern[bytes]", frozenset[str]]
SEARCHING = frozenset({"search", "findall", "finditer", "sub", "subn", "split"})


def literal_patterns(path: Path) -> list[Found]:
    """Pattern literals passed to re.compile/sub/search/match/fullmatch/findall/finditer/split."""
    found = []
    source = path.read_text()
    tree = ast.parse(source, str(path))
    assigned = {id(node.value): node.targets[0].id for node in ast.walk(tree)
                if isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"):
            continue
        if node.func.attr not in ("compile", "sub", "subn", "search", "match", "fullmatch",
                                  "findall", "finditer", "split") or not node.args:
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str | bytes)):
            continue
        flags_node = next((k.value for k in node.keywords if k.arg == "flags"), None)
        if flags_node is None:
            pos = 1 if node.func.attr in ("compile", "search", "match", "fullmatch", "findall",
                                          "finditer") else 3
            if node.func.attr == "split":
                pos = 3
            if len(node.args) > pos:
                flags_node = node.args[pos]
        try:
            method = node.func.attr
            modes = frozenset({method})
            if method == "compile":  # called later through the name it is bound to
                name = assigned.get(id(node))
                modes = _modes(source, name) if name else SEARCHING
            found.append((f"{path.relative_to(PKG.parent)}:{node.lineno}",
                          re.compile(first.value, _flags(flags_node)), modes))
        except re.error:
            continue
    return found


def _modes(source: str, attr: str) -> frozenset[str]:
    """How the module calls the pattern held in `attr` (search-like when it cannot tell)."""
    used = set(re.findall(rf"\b{re.escape(attr)}\.(\w+)\(", source))
    used &= SEARCHING | {"match", "fullmatch"}
    return frozenset(used) or SEARCHING


def module_patterns() -> list[Found]:
    found: list[Found] = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        if name.endswith("__main__"):
            continue  # importing it runs the command line
        try:
            module = importlib.import_module(name)
        except Exception:
            continue
        source = path.read_text()
        for attr, value in vars(module).items():
            if isinstance(value, re.Pattern):
                found.append((f"{rel}.py:{attr}", value, _modes(source, attr)))
            elif isinstance(value, tuple):
                for i, item in enumerate(value):
                    if isinstance(item, re.Pattern):
                        found.append((f"{rel}.py:{attr}[{i}]", item, SEARCHING))
                    elif (isinstance(item, tuple) and len(item) == 2
                          and isinstance(item[1], re.Pattern)):
                        found.append((f"{rel}.py:{attr}[{i}]", item[1], SEARCHING))
        found += literal_patterns(path)
    unique: dict[tuple[object, int, frozenset[str]], Found] = {}
    for where, pattern, modes in found:
        unique.setdefault((pattern.pattern, pattern.flags, modes), (where, pattern, modes))
    return list(unique.values())


def motifs(pattern: re.Pattern[str] | re.Pattern[bytes]) -> list[str]:
    source = pattern.pattern
    text = source.decode("latin-1") if isinstance(source, bytes) else source
    literal = sorted({c for c in text if c.isprintable() and c not in "\\"})
    chars = sorted(set(MAIL_CHARS) | set(literal))
    out = [c for c in chars]
    out += [a + b for a, b in itertools.product(chars, repeat=2) if a != b]
    # words of the pattern (e.g. "re:", "mailto:") repeated
    out += sorted({w for w in re.findall(r"[A-Za-z]{2,}[:=]?", text)})
    return out


def run(pattern: re.Pattern[str] | re.Pattern[bytes], text: str, modes: frozenset[str]
        ) -> float:
    subject: str | bytes = text
    if isinstance(pattern.pattern, bytes):
        subject = text.encode("utf-8")
    start = time.perf_counter()
    if modes & SEARCHING:
        pattern.findall(subject)  # type: ignore[arg-type]
        pattern.sub(b"" if isinstance(subject, bytes) else "", subject)  # type: ignore[call-overload]
    if "match" in modes:
        pattern.match(subject)  # type: ignore[arg-type]
    if "fullmatch" in modes:
        pattern.fullmatch(subject)  # type: ignore[arg-type]
    return time.perf_counter() - start


def worst(pattern: re.Pattern[str] | re.Pattern[bytes], modes: frozenset[str], size: int,
          budget: float) -> tuple[float, str, float]:
    """(ratio, motif, seconds at 4×size) of the motif that grows fastest."""
    best = (0.0, "", 0.0)
    deadline = time.perf_counter() + budget
    candidates = []
    for motif in motifs(pattern):
        text = (motif * (size // len(motif) + 1))[:size]
        for shaped in (text, "x" + text + "x\n", motif[:1] + text[:-1]):
            t = run(pattern, shaped, modes)
            candidates.append((t, shaped, motif))
        if time.perf_counter() > deadline:
            break
    candidates.sort(reverse=True)
    for t_small, shaped, motif in candidates[:6]:
        big = (shaped[:1] if shaped.startswith("x") else "") + (
            (motif * (4 * size // len(motif) + 1))[: 4 * size])
        if shaped.endswith("x\n"):
            big += "x\n"
        t_small = min(run(pattern, shaped, modes) for _ in range(3))
        t_big = run(pattern, big, modes)
        if t_big < 0.5:
            t_big = min(t_big, run(pattern, big, modes))
        ratio = t_big / max(t_small, 1e-6)
        if t_big > 0.02 and ratio > best[0]:
            best = (ratio, motif, t_big)
        if ratio > 12 and t_big > 0.05:
            break  # clearly super-linear: no need to look further
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--limit", type=float, default=2.5,
                        help="fail above this many times linear growth (4x input → 4x time)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per pattern, at most")
    parser.add_argument("--show-all", action="store_true")
    args = parser.parse_args()
    patterns = module_patterns()
    bad = 0
    for where, pattern, modes in patterns:
        ratio, motif, seconds = worst(pattern, modes, args.size, args.budget)
        superlinear = ratio > 4 * args.limit
        bad += superlinear
        if superlinear or args.show_all:
            flag = "SUPERLINEAR" if superlinear else "ok"
            how = "match" if not modes & SEARCHING else "search"
            print(f"{flag:11} {ratio:6.1f}x  {seconds * 1000:8.1f} ms at {4 * args.size} chars"
                  f"  motif {motif!r:10} {how:6} {where}  {pattern.pattern!r:.80}")
    print(f"{len(patterns)} patterns checked, {bad} grow faster than linear on hostile text")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
