"""The floors, enforced: every import of every module (lazy ones too) is read from its AST.

model (the vocabulary) imports nothing else of ours; core never imports cli, click or rich;
providers never import state. See docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gpushopper"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; write gpushopper.… in full")
            if node.module == "gpushopper":
                names.update(f"gpushopper.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def offending(package: str, forbidden) -> list[str]:
    return [
        f"{path.relative_to(ROOT.parent)} imports {name}"
        for path in modules(package)
        for name in sorted(imports_of(path))
        if forbidden(name)
    ]


def ours(name: str) -> bool:
    return name == "gpushopper" or name.startswith("gpushopper.")


def under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize(
    ("package", "forbidden", "rule"),
    [
        ("model", lambda n: ours(n) and not under(n, "gpushopper.model"), "nothing of ours"),
        ("core", lambda n: under(n, "gpushopper.cli", "click", "rich"), "no cli, click, rich"),
        ("providers", lambda n: under(n, "gpushopper.state", "gpushopper.cli"), "no state"),
        ("state", lambda n: under(n, "gpushopper.cli", "gpushopper.core"), "no cli, core"),
        ("remote", lambda n: under(n, "gpushopper.cli", "gpushopper.core"), "no cli, core"),
        (
            "sandbox",
            lambda n: (
                (ours(n) and not under(n, "gpushopper.sandbox"))
                or under(n, "requests", "rich", "click", "paramiko", "pytest")
            ),
            "stdlib only",
        ),
    ],
)
def test_floor_imports(package, forbidden, rule):
    assert modules(package), package
    assert offending(package, forbidden) == [], rule


def test_the_checker_sees_lazy_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from gpushopper.cli import output\n", encoding="utf-8")
    assert "gpushopper.cli" in imports_of(probe)


SEAMS = {"provider", "store", "app", "settings", "enforcer", "policy", "inner"}


def test_core_and_providers_type_their_collaborators():
    """The seams between floors are typed (Provider, StateStore, SettingsReader, ...), never
    ``Any``: mypy then checks every call across them. Untrusted JSON stays ``Any``."""
    loose = []
    for package in ("core", "providers"):
        for path in modules(package):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args.args + node.args.kwonlyargs
                    loose += [
                        f"{path.name}:{node.lineno} {node.name}({a.arg})"
                        for a in args
                        if a.arg in SEAMS
                        and a.annotation is not None
                        and "Any" in ast.unparse(a.annotation)
                    ]
                elif (
                    isinstance(node, ast.AnnAssign)
                    and isinstance(node.target, ast.Name)
                    and node.target.id in SEAMS
                    and "Any" in ast.unparse(node.annotation)
                ):
                    loose.append(f"{path.name}:{node.lineno} {node.target.id}")
                if isinstance(node, ast.arg) and node.arg == "provider_factory":
                    assert "Any" not in ast.unparse(node.annotation), path
    assert loose == []
