"""The rules of the house about who imports whom (ARCHITECTURE.md): fusion never imports the
agent nor the agent fusion, only the store touches lmdb (and the migrations, which rewrite
store files), and no module reaches for another package's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "fustor"


def imports(package: str):
    for py in sorted((PKG / package).rglob("*.py")) if package else sorted(PKG.glob("*.py")):
        tree = ast.parse(py.read_text(), str(py))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield py, a.name, None
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    yield py, node.module, a.name


def test_fusion_and_agent_do_not_import_each_other():
    bad = [f"{p.relative_to(PKG)}: {m}" for p, m, _ in imports("fusion") if m.startswith("fustor.agent")]
    bad += [f"{p.relative_to(PKG)}: {m}" for p, m, _ in imports("agent") if m.startswith("fustor.fusion")]
    assert bad == []


def test_only_the_store_and_its_migrations_use_lmdb():
    bad = [str(p.relative_to(PKG)) for p, m, _ in imports("")
           if m == "lmdb" or m.startswith("lmdb.")]
    for package in ("fusion", "agent"):
        bad += [str(p.relative_to(PKG)) for p, m, _ in imports(package) if m.split(".")[0] == "lmdb"]
    assert bad == []


def test_no_private_names_across_modules():
    bad = [f"{p.relative_to(PKG)}: {m}.{name}" for pkg in ("", "fusion", "agent", "store")
           for p, m, name in imports(pkg)
           if m.startswith("fustor") and name and name.startswith("_") and not name.startswith("__")]
    assert bad == []
