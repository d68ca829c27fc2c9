"""The library's layers: imports only go down, and no module imports itself back through others.

Layers, low to high: ``io``, ``text`` -> ``data``, ``runtime`` -> ``models`` -> ``train``, ``evaluate``,
``config`` -> ``tools``. Same-layer packages do not import each other; a package may import its
own modules. Every import counts, also those inside functions (they run too).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"io": 0, "text": 0, "data": 1, "runtime": 1, "models": 2, "train": 3, "evaluate": 3, "config": 3,
          "tools": 4}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def hms_imports(path: Path) -> set[str]:
    """The ``hms_core`` modules a file imports (``from hms_core.x import y`` names ``hms_core.x.y``
    when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hms_core")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hms_core"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if module_file(sub) else node.module)
    return {m for m in found if m != "hms_core"}


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def graph(root: Path = ROOT / "hms_core") -> dict[str, set[str]]:
    return {module_name(p): hms_imports(p) for p in sorted(root.rglob("*.py"))}


def group(module: str) -> str:
    """``hms_core.models.hms`` -> ``models``; ``hms_core.io`` -> ``io``."""
    return module.split(".")[1]


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in g.items():
        if mod == "hms_core":
            continue
        for dep in deps:
            a, b = group(mod), group(dep)
            if a != b and LAYERS[b] >= LAYERS[a]:
                bad.append(f"{mod} imports {dep} ({b} is not below {a})")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                found.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_every_package_has_a_layer():
    unknown = {group(m) for m in graph() if m != "hms_core"} - set(LAYERS)
    assert not unknown, f"add these to LAYERS: {unknown}"


def test_imports_only_go_down():
    assert upward_imports(graph()) == []


def test_no_import_circle():
    assert cycles(graph()) == []


def test_the_checks_catch_an_upward_import_and_a_circle():
    g = graph()
    g["hms_core.data.dataset"] = g["hms_core.data.dataset"] | {"hms_core.models.hms"}
    assert any("hms_core.data.dataset imports hms_core.models.hms" in b for b in upward_imports(g))
    g["hms_core.models.heads"] = g["hms_core.models.heads"] | {"hms_core.models.hms"}
    assert cycles(g), "heads -> hms -> heads is a circle"


@pytest.mark.parametrize("path", sorted((ROOT / "hms_core").rglob("*.py")), ids=lambda p: module_name(p))
def test_imports_resolve(path):
    for dep in hms_imports(path):
        assert module_file(dep), f"{path}: imports {dep}, which does not exist"
