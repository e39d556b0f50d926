"""The layering: every module of alma_mcp belongs to one declared layer, imports only from its own
layer and the layers below it, no two modules import each other, and only the storage layer knows
Chroma."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "alma_mcp"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # The shared vocabulary (the package root holds only the version and the lazy public names),
    # and what is generated from it: JSON schemas, the configuration reference.
    ("vocabulary", ("alma_mcp", "alma_mcp.errors", "alma_mcp.models", "alma_mcp.config", "alma_mcp.scope",
                    "alma_mcp.schemas", "alma_mcp.configdoc")),
    ("embedding", ("alma_mcp.embedding",)),
    ("storage", ("alma_mcp.storage",)),
    ("indexes", ("alma_mcp.indexes",)),
    ("learning", ("alma_mcp.learning",)),
    ("prompt", ("alma_mcp.prompt",)),
    ("ranking", ("alma_mcp.ranking",)),
    ("backup", ("alma_mcp.backup",)),
    ("service", ("alma_mcp.service",)),
    ("interop", ("alma_mcp.interop",)),
    ("frontends", ("alma_mcp.frontends", "alma_mcp.__main__")),
]
"""Lowest first. A module belongs to the layer with the longest name that is it or a package
holding it; it may import its own layer and those listed before it."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The alma_mcp modules `name` imports: at the top, inside a function or for type checking only."""
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


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for rank, (_, names) in enumerate(LAYERS):
        for declared in names:
            if (module == declared or module.startswith(declared + ".")) and (best is None or len(declared) > best[0]):
                best = (len(declared), rank)
    return None if best is None else best[1]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_belongs_to_a_layer() -> None:
    undeclared = sorted(name for name in _modules() if layer_of(name) is None)
    assert not undeclared, f"modules in no layer (add them to LAYERS): {undeclared}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{name} ({LAYERS[layer_of(name) or 0][0]}) imports {target} ({LAYERS[layer_of(target) or 0][0]})"
        for name, targets in sorted(_graph().items())
        for target in sorted(targets)
        if (layer_of(target) or 0) > (layer_of(name) or 0)
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_two_modules_import_each_other() -> None:
    graph = _graph()
    mutual = [(a, b) for a, b in itertools.combinations(sorted(graph), 2) if b in graph[a] and a in graph[b]]
    assert not mutual, f"modules that import each other: {mutual}"


def test_the_checks_see_what_they_check() -> None:
    """The graph is read right: a few imports known to exist are found, so the tests above cannot
    pass by seeing no imports at all."""
    graph = _graph()
    assert "alma_mcp.storage.store" in graph["alma_mcp.ranking.retriever"]  # from ..storage.store import
    assert "alma_mcp.embedding.bert" in graph["alma_mcp.embedding.embedder"]  # from . import bert, in a function
    assert "alma_mcp" in graph["alma_mcp.frontends.cli"]  # from .. import __version__
    assert layer_of("alma_mcp.frontends.ui.views") == len(LAYERS) - 1
    assert layer_of("alma_mcp.learning.lifecycle") < layer_of("alma_mcp.ranking.retriever")  # type: ignore[operator]


def _imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_store_knows_chroma() -> None:
    for name, path in _modules().items():
        source = path.read_text(encoding="utf-8")
        if name not in ("alma_mcp.storage.store", "alma_mcp.storage.writelock"):
            assert "chromadb" not in _imported(path), f"{name} imports chromadb"
        if name != "alma_mcp.storage.store":
            for private in ("._collections", "._bump(", "._shared", "._generations"):
                assert f"store{private}" not in source, f"{name} reaches into the store's {private}"


def test_test_modules_import_no_other_test_module() -> None:
    """Shared test code lives in tests/helpers.py (and fixtures in conftest.py), so a test module
    can be run, moved or deleted alone."""
    tests = Path(__file__).resolve().parent
    for path in tests.glob("test_*.py"):
        imported = _imported(path)
        assert not {m for m in imported if m.startswith("test_") or m == "conftest"}, f"{path.name} imports {imported}"
