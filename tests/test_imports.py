"""Enforced layering: brokerless never imports zauction, and the core does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BROKERLESS = ROOT / "brokerless"
CORE = BROKERLESS / "core"
CORE_FORBIDDEN = {
    "zmq", "asyncio", "threading", "socket", "time", "random", "os", "io", "pathlib", "sqlite3",
}


def imported_roots(tree: ast.AST) -> set[str]:
    """Top-level package names a module imports (absolute imports only: relative ones stay
    inside the package by construction)."""
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                roots.add(arg.value.split(".")[0])
            else:
                roots.add("<dynamic import>")
    return roots


def _is_dynamic_import(call: ast.Call) -> bool:
    func = call.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return name in ("__import__", "import_module")


def calls_open(tree: ast.AST) -> bool:
    return any(
        isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "open")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "open")
        )
        for node in ast.walk(tree)
    )


def modules(package: Path) -> list[Path]:
    found = sorted(package.rglob("*.py"))
    assert found, f"no modules under {package}"
    return found


def parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("path", modules(BROKERLESS), ids=lambda p: str(p.relative_to(ROOT)))
def test_brokerless_never_imports_zauction(path: Path) -> None:
    assert "zauction" not in imported_roots(parse(path))


@pytest.mark.parametrize("path", modules(CORE), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_is_free_of_io(path: Path) -> None:
    tree = parse(path)
    assert imported_roots(tree) & (CORE_FORBIDDEN | {"<dynamic import>"}) == set()
    assert not calls_open(tree), f"{path.name} calls open()"


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("import zmq", {"zmq"}),
        ("import os.path as p", {"os"}),
        ("from time import monotonic", {"time"}),
        ("from random import Random", {"random"}),
        ("__import__('socket')", {"socket"}),
        ("importlib.import_module(name)", {"<dynamic import>"}),
        ("from . import log", set()),
        ("from brokerless.types import Entry", set()),
    ],
)
def test_the_checker_sees_forbidden_imports(source: str, bad: set[str]) -> None:
    """The rule above can fail: these are the shapes it must catch (and must not)."""
    found = imported_roots(ast.parse(source)) & (CORE_FORBIDDEN | {"<dynamic import>"})
    assert found == bad


@pytest.mark.parametrize(
    ("source", "opens"),
    [("open('x')", True), ("Path('x').open()", True), ("log.append(x)", False)],
)
def test_the_checker_sees_open_calls(source: str, opens: bool) -> None:
    assert calls_open(ast.parse(source)) is opens
