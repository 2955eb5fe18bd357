"""The dependency direction of DESIGN.md, checked by walking every module's imports with ast.

model/config/errors/mailbounds (stdlib only) ← spool, store ← stage modules ← pipeline (and
service, the orchestrator of agent actions), smtp ← daemon, admin, cli, app. Stage modules never
import each other; the smtp package never imports the store, the pipeline, the rules or
threading.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "mailgate"

FOUNDATION = {"mailgate.model", "mailgate.config", "mailgate.errors", "mailgate.mailbounds"}
STAGES = {"mailgate.parse", "mailgate.threading", "mailgate.rules", "mailgate.outbound",
          "mailgate.classify", "mailgate.replytext", "mailgate.workflow",
          "mailgate.organizations", "mailgate.auth", "mailgate.digest"}
ORCHESTRATORS = {"mailgate.pipeline", "mailgate.deliver", "mailgate.service",
                 "mailgate.automation", "mailgate.scheduler", "mailgate.quarantine"}
OUTER = {"mailgate.daemon", "mailgate.cli", "mailgate.admin", "mailgate.__main__", "mailgate.app",
         "mailgate.doctor", "mailgate.setup_wizard", "mailgate.sdnotify",
         "mailgate.cli_orgs", "mailgate.cli_rules", "mailgate.cli_spam", "mailgate.lockfile"}
# Observability, like logging, and the package's own data files: importable from anywhere,
# importing nothing of mailgate.
ANYWHERE = {"mailgate.metrics", "mailgate.logsetup", "mailgate.builtin"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mailgate":  # `from mailgate import app` imports mailgate.app
                found |= {f"mailgate.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return {m for m in found if m == "mailgate" or m.startswith("mailgate.")}


def _top(name: str) -> str:
    """mailgate.store.db → mailgate.store; mailgate.smtp.handler → mailgate.smtp."""
    return ".".join(name.split(".")[:2])


MODULES = {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def test_foundation_is_stdlib_only() -> None:
    for mod in FOUNDATION:
        assert MODULES[mod] <= FOUNDATION, (mod, MODULES[mod] - FOUNDATION)


def test_smtp_never_reaches_later_stages() -> None:
    allowed = FOUNDATION | ANYWHERE | {"mailgate.spool", "mailgate.smtp"}
    for mod, imports in MODULES.items():
        if _top(mod) == "mailgate.smtp":
            bad = {i for i in imports if _top(i) not in allowed and i not in allowed}
            assert not bad, (mod, bad)


def test_stages_do_not_import_each_other_or_outer_layers() -> None:
    for mod, imports in MODULES.items():
        top = _top(mod)
        if top not in STAGES:
            continue
        for imp in imports:
            other = _top(imp)
            assert other == top or other not in STAGES | OUTER | ORCHESTRATORS, (mod, imp)


def test_store_and_spool_do_not_import_stages_or_outer_layers() -> None:
    for mod, imports in MODULES.items():
        if _top(mod) in ("mailgate.store", "mailgate.spool"):
            for imp in imports:
                assert _top(imp) not in STAGES | OUTER | ORCHESTRATORS | {"mailgate.smtp"}, (
                    mod, imp)


def test_only_outer_layers_import_the_pipeline_and_daemon() -> None:
    for mod, imports in MODULES.items():
        if _top(mod) in OUTER | ORCHESTRATORS:
            continue
        assert not imports & ORCHESTRATORS, mod
        assert "mailgate.daemon" not in imports, mod


def test_metrics_import_nothing_of_mailgate() -> None:
    for mod in ANYWHERE:
        assert not MODULES[mod], (mod, MODULES[mod])
