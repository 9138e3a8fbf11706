"""Probes: per-step measurements taken *during* training (``Arm.probe``). They are training
code, not analysis: a probe runs inside the training loop and writes into the run's metrics,
so a changed probe makes the runs of every study that uses it stale
(``tests/test_docs_fresh.py``), and only those.

Rules that keep that check honest:

* each probe class lives in a module of this package (one per study that owns probes), and an
  arm names it as the class or a ``functools.partial`` of it (never a lambda, whose code would
  hide in the study module);
* a probe module imports nothing from ``bnlab.studies`` outside this package, so that analysis
  code cannot change what a probe measures.

``probe_files(arms)`` lists the source files (relative to ``src/``) the arms' probes depend on
inside ``bnlab.studies``: their modules and the probe modules those import, transitively.
"""

from __future__ import annotations

import ast
import functools
import importlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["PACKAGE", "probe_class", "probe_files"]

PACKAGE = __name__  # "bnlab.studies.probes"
SRC = Path(__file__).resolve().parents[3]  # .../src


def probe_class(factory: Callable[[], Any]) -> type:
    """The class an arm's probe factory builds: the class itself or a partial of it."""
    target = factory.func if isinstance(factory, functools.partial) else factory
    if not isinstance(target, type):
        raise TypeError(f"a probe factory must be the probe class or a functools.partial of it "
                        f"(so its code can be traced to {PACKAGE}), not {factory!r}")
    if not target.__module__.startswith(PACKAGE + "."):
        raise TypeError(f"probe {target.__qualname__} is defined in {target.__module__}: move it "
                        f"to a module of {PACKAGE} (probes are training code)")
    return target


def _imports(module: str) -> set[str]:
    """The bnlab.studies modules that `module`'s source imports."""
    tree = ast.parse(Path(importlib.import_module(module).__file__ or "").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    found = set()
    for name in names:
        if name.startswith("bnlab.studies"):
            try:
                importlib.import_module(name)
            except ImportError:  # an attribute, not a module
                continue
            found.add(name)
    return found


def probe_modules(arms: Iterable[Any]) -> list[str]:
    """The modules in bnlab.studies that the arms' probes run (probe modules, transitively);
    a TypeError if a probe lives elsewhere or a probe module imports analysis code."""
    todo = [probe_class(arm.probe).__module__ for arm in arms if arm.probe is not None]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for dep in _imports(module):
            if dep != PACKAGE and not dep.startswith(PACKAGE + "."):
                raise TypeError(f"probe module {module} imports {dep}: a probe may import from "
                                f"bnlab.studies only {PACKAGE} (probes are training code)")
            todo.append(dep)
    return sorted(seen)


def probe_files(arms: Iterable[Any]) -> list[str]:
    """``probe_modules`` as paths relative to the repository root ("src/bnlab/...")."""
    out = []
    for module in probe_modules(arms):
        path = Path(importlib.import_module(module).__file__ or "").resolve()
        out.append(str(Path("src") / path.relative_to(SRC)))
    return out
