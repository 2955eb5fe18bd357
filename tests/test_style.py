"""The code stays ruff-clean (the rules in pyproject.toml) and free of merge leftovers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "mailgate", "tests", "bench"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_merge_conflict_markers() -> None:
    """No file under version control keeps a merge's conflict markers (one was left in a
    docstring once, where nothing else noticed it)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60).stdout.split()
    if not files:  # not a git checkout (an unpacked sdist): nothing to check
        return
    markers = ("<<<<<<< ", "<<<<<<<< ", ">>>>>>> ", ">>>>>>>> ")
    found = []
    for name in files:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".toml", ".txt", ".html", ".cfg", ".sh", "") or \
                not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.startswith(markers):
                found.append(f"{name}:{number}")
    assert not found, found
