"""The dependency direction of DESIGN.md, checked by walking every module's imports with ast.

model/config/errors/mailbounds (stdlib only) ← spool, store ← stage packages (parsing, classify,
auth, threading, rules, outbound) ← pipeline (the orchestrators), smtp ← ops, admin, cli.
Stage packages never import each other; the smtp package never imports the store, the pipeline,
the rules or threading. The top level holds only that foundation and the spool: every other
module sits in the package of its stage or layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "mailgate"

FOUNDATION = {"mailgate.model", "mailgate.config", "mailgate.errors", "mailgate.mailbounds"}
STAGES = {"mailgate.parsing", "mailgate.classify", "mailgate.auth", "mailgate.threading",
          "mailgate.rules", "mailgate.outbound"}
ORCHESTRATORS = {"mailgate.pipeline"}
OUTER = {"mailgate.ops", "mailgate.cli", "mailgate.admin", "mailgate.__main__"}
# Observability, like logging, and the package's own data files: importable from anywhere,
# importing nothing of mailgate.
ANYWHERE = {"mailgate.ops.metrics", "mailgate.ops.logsetup", "mailgate.builtin"}
TOP_LEVEL = {"__init__", "__main__", "model", "config", "errors", "mailbounds", "spool"}


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
            # `from mailgate.ops import app` imports the module mailgate.ops.app
            package = PKG.parent.joinpath(*node.module.split("."))
            for a in node.names:
                sub = package / a.name
                found.add(f"{node.module}.{a.name}" if sub.with_suffix(".py").is_file()
                          or (sub / "__init__.py").is_file() else node.module)
    return {m for m in found if m == "mailgate" or m.startswith("mailgate.")}


def _top(name: str) -> str:
    """mailgate.store.db → mailgate.store; mailgate.smtp.handler → mailgate.smtp; a module
    importable from anywhere is its own layer."""
    return name if name in ANYWHERE else ".".join(name.split(".")[:2])


MODULES = {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def test_foundation_is_stdlib_only() -> None:
    for mod, imports in MODULES.items():
        if _top(mod) in FOUNDATION:
            bad = {i for i in imports if _top(i) not in FOUNDATION}
            assert not bad, (mod, bad)


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
        assert "mailgate.ops.daemon" not in imports, mod


def test_metrics_import_nothing_of_mailgate() -> None:
    for mod in ANYWHERE:
        assert not MODULES[mod], (mod, MODULES[mod])


def test_the_top_level_holds_only_the_foundation_and_the_spool() -> None:
    stray = {p.stem for p in PKG.glob("*.py")} - TOP_LEVEL
    assert not stray, f"modules that belong in a stage or layer package: {sorted(stray)}"
    layers = FOUNDATION | STAGES | ORCHESTRATORS | OUTER | {
        "mailgate.smtp", "mailgate.spool", "mailgate.store", "mailgate.builtin", "mailgate"}
    packages = {f"mailgate.{p.parent.name}" for p in PKG.glob("*/__init__.py")}
    assert packages <= layers, packages - layers


def test_command_modules_share_only_the_cli_base() -> None:
    """No import circle in the CLI: `base` imports no command module, a command module imports
    no other one; only the package's `__init__` puts them together."""
    for mod, imports in MODULES.items():
        if mod.startswith("mailgate.cli.") and mod != "mailgate.cli.base":
            assert {i for i in imports if i.startswith("mailgate.cli")} <= {
                "mailgate.cli.base"}, mod
    assert not {i for i in MODULES["mailgate.cli.base"] if i.startswith("mailgate.cli")}
