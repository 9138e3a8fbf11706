"""Nothing in bnlab imports upward or in a circle, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first: a module may import its own layer's modules and lower layers' only.
LAYERS = [
    {"bnlab.errors", "bnlab.files"},
    {"bnlab.norm", "bnlab.functional"},
    {"bnlab.data", "bnlab.models"},
    {"bnlab.train"},
    {"bnlab.report"},
    {"bnlab.studies"},
    {"bnlab", "bnlab.cli", "bnlab.demo", "bnlab.__main__"},
]


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "bnlab").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The bnlab modules `path` imports, anywhere in it (not only at the top)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
                     else node.module for a in node.names]
        out |= {n for n in names if n in known}
    return out


def layer(module: str) -> int:
    for i, members in enumerate(LAYERS):
        if any(module == m or (m != "bnlab" and module.startswith(m + ".")) for m in members):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known) - {m} for m, p in known.items()}


def test_nothing_imports_upward():
    upward = [(m, d) for m, deps in graph().items() for d in deps if layer(d) > layer(m)]
    assert not upward, upward


def find_circles(g: dict[str, set[str]]) -> list[list[str]]:
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                circles.append([*path[path.index(d):], d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return circles


def outside_norm() -> dict[str, set[str]]:
    """The import graph without the edges inside bnlab.norm (that package orders its own
    modules: reference, functional, kernels, layers)."""
    return {m: {d for d in deps if not (m.startswith("bnlab.norm.")
                                        and d.startswith("bnlab.norm"))}
            for m, deps in graph().items()}


def test_no_import_circles_outside_the_norm_package():
    circles = find_circles(outside_norm())
    assert not circles, circles


def test_a_circle_would_be_found():
    """Run.model() once imported the loop that imports Run: such a circle is caught."""
    g = outside_norm()
    g["bnlab.train.run"].add("bnlab.train.loop")
    assert ["bnlab.train.loop", "bnlab.train.run", "bnlab.train.loop"] in find_circles(g)
