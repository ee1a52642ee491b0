"""The privacy package imports in one direction: no module imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import medsynth.privacy

PACKAGE = "medsynth.privacy"


def _imports(path: Path) -> set[str]:
    """Every medsynth.privacy module ``path`` imports, anywhere (functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if node.level == 0 else f"{PACKAGE}.{node.module}"
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}  # `from medsynth.privacy import index`
    return found


def test_no_import_cycle_inside_the_privacy_package():
    root = Path(medsynth.privacy.__file__).parent
    modules = {(PACKAGE if p.stem == "__init__" else f"{PACKAGE}.{p.stem}"): p for p in root.glob("*.py")}
    graph = {m: sorted(_imports(p) & set(modules) - {m}) for m, p in modules.items()}
    assert graph[f"{PACKAGE}.index"], "the scan should see the index's imports"

    def cycle_from(m: str, path: list[str]) -> list[str] | None:
        if m in path:
            return [*path[path.index(m) :], m]
        for n in graph[m]:
            found = cycle_from(n, [*path, m])
            if found:
                return found
        return None

    cycles = [c for m in graph if (c := cycle_from(m, []))]
    assert not cycles, " -> ".join(cycles[0])
