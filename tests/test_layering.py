"""The package's layering, read from its import statements (module level and inside functions).

Data flows one way (data -> models(norm) -> train -> run directory -> report), so: no import
circles anywhere in bnlab; ``bnlab.norm`` imports nothing else from bnlab; inside it the
readable reference imports only torch, the kernels plug-in knows only the reference, and the
choice of backend lives in one module; models and the trainer do not know that kernels exist.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every bnlab module this file imports (``from a import b``: a.b if that is a module).

    (Importing a submodule runs its package's __init__ first, as for every module of that
    package: that order is Python's, not an edge of the design, so it is not counted.)"""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for a in node.names:  # a submodule, else a name defined in `base` itself
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_no_import_circles():
    cycles = _cycles(GRAPH)
    assert not cycles, "\n".join(cycles)


def test_a_circle_would_be_found():
    """Run.model() once imported the loop that imports Run: such a circle is caught."""
    graph = {name: set(deps) for name, deps in GRAPH.items()}
    assert "bnlab.train.run" in graph["bnlab.train.loop"]
    graph["bnlab.train.run"].add("bnlab.train.loop")
    # (reported from whichever of the two the search meets first)
    assert any(set(c.split(" -> ")) == {"bnlab.train.loop", "bnlab.train.run"}
               for c in _cycles(graph))


# Lowest first: a module imports only modules of its own layer and of lower ones.
LAYERS = [
    {"bnlab.errors", "bnlab.files", "bnlab.memory", "bnlab.provenance", "bnlab.settings",
     "bnlab.user_code"},
    {"bnlab.norm", "bnlab.functional"},
    {"bnlab.data", "bnlab.models"},
    {"bnlab.train"},
    {"bnlab.deploy"},  # a run's model as ONNX (reads runs like the report)
    {"bnlab.report"},
    {"bnlab.studies"},
    {"bnlab", "bnlab.cli", "bnlab.demo", "bnlab.__main__"},
]


def _layer(module: str) -> int:
    for i, members in enumerate(LAYERS):
        if any(module == m or (m != "bnlab" and module.startswith(m + ".")) for m in members):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_nothing_imports_upward():
    upward = [(name, dep) for name, deps in GRAPH.items() for dep in deps
              if _layer(dep) > _layer(name)]
    assert not upward, upward


def _bnlab_imports(prefix: str) -> dict[str, set[str]]:
    return {name: deps for name, deps in GRAPH.items()
            if name == prefix or name.startswith(prefix + ".")}


def test_norm_imports_nothing_else_from_bnlab():
    outside = {name: {d for d in deps if not d.startswith("bnlab.norm")}
               for name, deps in _bnlab_imports("bnlab.norm").items()}
    assert not {n: d for n, d in outside.items() if d}


def test_reference_imports_only_torch():
    assert GRAPH["bnlab.norm.reference"] == set()


def test_kernels_know_only_the_reference():
    for name, deps in _bnlab_imports("bnlab.norm.kernels").items():
        assert deps <= {"bnlab.norm.reference"} | set(_bnlab_imports("bnlab.norm.kernels")), name


@pytest.mark.parametrize("layer", ["bnlab.models", "bnlab.train", "bnlab.studies",
                                   "bnlab.report", "bnlab.data"])
def test_upper_layers_do_not_know_the_kernels(layer):
    for name, deps in _bnlab_imports(layer).items():
        assert not {d for d in deps if d.startswith(("bnlab.norm.kernels",
                                                     "bnlab.norm.backends"))}, name


def test_one_module_chooses_the_backend():
    """Only backends.py, and the fused layer's entry that asks it, call the kernels."""
    callers = {name for name, deps in GRAPH.items()
               if any(d.startswith("bnlab.norm.kernels") for d in deps)
               and not name.startswith("bnlab.norm.kernels")}
    assert callers <= {"bnlab.norm.backends", "bnlab.norm.fused", "bnlab.cli"}, callers
