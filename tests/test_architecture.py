"""The layering: no two modules of alma_mcp import each other, backup reaches the service only
through its `Service` protocol, and only the store (with the Chroma client wrapper it opens)
knows Chroma."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "alma_mcp"

# Pairs still importing each other, which the split of retrieval.py removes; none may be added.
KNOWN_MUTUAL = {("alma_mcp.learning", "alma_mcp.retrieval"), ("alma_mcp.prompt", "alma_mcp.retrieval")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The alma_mcp modules `name` imports, at the top or inside a function."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                out.add(candidate if candidate in modules else target)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in modules and m != name}


def test_no_two_modules_import_each_other() -> None:
    modules = _modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    mutual = {(a, b) for a, b in itertools.combinations(sorted(graph), 2) if b in graph[a] and a in graph[b]}
    assert mutual <= KNOWN_MUTUAL, f"modules that import each other: {sorted(mutual - KNOWN_MUTUAL)}"
    assert "alma_mcp.service" not in graph["alma_mcp.backup"]


def _imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_store_knows_chroma() -> None:
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        if path.name not in ("store.py", "writelock.py"):
            assert "chromadb" not in _imported(path), f"{path.name} imports chromadb"
        if path.name != "store.py":
            for private in ("._collections", "._bump(", "._shared", "._generations"):
                assert f"store{private}" not in source, f"{path.name} reaches into the store's {private}"


def test_test_modules_import_no_other_test_module() -> None:
    """Shared test code lives in tests/helpers.py (and fixtures in conftest.py), so a test module
    can be run, moved or deleted alone."""
    tests = Path(__file__).resolve().parent
    for path in tests.glob("test_*.py"):
        imported = _imported(path)
        assert not {m for m in imported if m.startswith("test_") or m == "conftest"}, f"{path.name} imports {imported}"
