"""Enforced layering, read from the source (lazy imports inside functions included):

- brokerless never imports zauction, and its consensus core does no I/O;
- the auction model (zauction/auction) is pure: no sockets, clock, files or randomness, and
  nothing of zauction outside itself;
- the client never imports the server, the tools or the CLI;
- the tools use the client, never the server;
- the server never imports the client, the tools or the CLI;
- no import circle anywhere in brokerless or zauction."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BROKERLESS = ROOT / "brokerless"
ZAUCTION = ROOT / "zauction"
CORE = BROKERLESS / "core"
CORE_FORBIDDEN = {
    "zmq", "asyncio", "threading", "socket", "time", "random", "os", "io", "pathlib", "sqlite3",
}
# The auction model may read its snapshot from bytes (io.BytesIO), nothing else of the world.
PURE_FORBIDDEN = (CORE_FORBIDDEN - {"io"}) | {"subprocess", "signal", "datetime", "brokerless"}
# package -> the zauction packages it must never import
LAYER_RULES = {
    "zauction.auction": {"zauction.protocol", "zauction.server", "zauction.client",
                         "zauction.tools", "zauction.cli"},
    "zauction.client": {"zauction.server", "zauction.tools", "zauction.cli"},
    "zauction.tools": {"zauction.server", "zauction.cli"},
    "zauction.server": {"zauction.client", "zauction.tools", "zauction.cli"},
    "zauction.protocol": {"zauction.server", "zauction.client", "zauction.tools",
                          "zauction.cli"},
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


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name an import statement names, anywhere in the file (functions too).
    `from a import b` names `a.b` when that is a module of ours, else `a`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                names.add(candidate if _module_path(candidate) else base)
    return names


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    parent = parts if is_package else parts[:-1]
    base = parent[: len(parent) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _module_path(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Our modules -> the modules of ours they import."""
    ours = {module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in ours.items():
        found = imported_modules(parse(path), name, path.name == "__init__.py")
        graph[name] = {m for m in found if m in ours and m != name}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt)) is not None:
                return circle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (circle := visit(start)) is not None:
            return circle
    return None


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


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


ALL_MODULES = modules(BROKERLESS) + modules(ZAUCTION)
GRAPH = import_graph(ALL_MODULES)


def test_no_import_circle_anywhere():
    assert find_circle(GRAPH) is None, f"import circle: {' -> '.join(find_circle(GRAPH))}"


@pytest.mark.parametrize("path", modules(ZAUCTION / "auction"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_auction_model_is_pure(path: Path) -> None:
    tree = parse(path)
    assert imported_roots(tree) & (PURE_FORBIDDEN | {"<dynamic import>"}) == set()
    assert not calls_open(tree), f"{path.name} calls open()"


@pytest.mark.parametrize("package", sorted(LAYER_RULES))
def test_each_layer_imports_only_what_it_may(package: str) -> None:
    forbidden = LAYER_RULES[package]
    members = [m for m in GRAPH if in_package(m, package)]
    assert members, f"no modules in {package}"
    broken = {(m, dep) for m in members for dep in GRAPH[m]
              if any(in_package(dep, f) for f in forbidden)}
    assert broken == set()


def test_the_circle_finder_sees_direct_and_long_circles():
    assert find_circle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_lazy_and_relative_imports_are_edges_too():
    lazy = ast.parse("def f():\n    from zauction.client import feed\n")
    assert imported_modules(lazy, "zauction.client.client", False) == {"zauction.client.feed"}
    relative = ast.parse("from . import raft\nfrom .ready import Config\n")
    assert imported_modules(relative, "brokerless.core", True) == {
        "brokerless.core.raft", "brokerless.core.ready"}
