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
    ("backup", ("alma_mcp.backup", "alma_mcp.interop")),
    ("service", ("alma_mcp.service",)),
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


# -- ALMA is a facade: tests and benchmarks use its public methods, never its parts ------------
ROOT = PACKAGE.parent
PARTS = ("store", "retriever", "learner", "lifecycle", "audit")
"""The components ALMA is built from; it used to hand them out, and no longer does."""


def _alma_private_names() -> set[str]:
    """ALMA's private methods, properties and instance attributes (read from service.py)."""
    tree = ast.parse((PACKAGE / "service.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ALMA")
    names = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    names |= {t.id for n in cls.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_uses(source: str, private: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every `something._name` in `source` where `_name` is one of ALMA's private names."""
    return [
        (node.lineno, node.attr)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr in private
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]


def test_tests_and_benchmarks_touch_no_private_part_of_alma() -> None:
    private = _alma_private_names()
    assert {"_store", "_retriever", "_learner", "_lifecycle", "_audit", "_preload_scopes"} <= private
    assert private_uses("alma._store.get(memory_id)", private) == [(1, "_store")]  # the check sees a reach-in
    found = [
        f"{path.relative_to(ROOT)}:{line}: .{name}"
        for folder in ("tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, name in private_uses(path.read_text(encoding="utf-8"), private)
    ]
    assert found == [], "use ALMA's public methods (docs/library.md), or build the component itself: " + ", ".join(found)


def test_alma_hands_out_none_of_its_parts() -> None:
    from alma_mcp.service import ALMA

    assert [part for part in PARTS if hasattr(ALMA, part)] == []


def test_every_third_party_import_of_the_package_is_a_declared_dependency() -> None:
    import importlib.metadata
    import re
    import sys
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
    distributions = importlib.metadata.packages_distributions()
    missing = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for top in {n.split(".")[0] for n in names} - {"", "alma_mcp"} - set(sys.stdlib_module_names):
                if top in distributions and not {d.lower().replace("_", "-") for d in distributions[top]} & declared:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
