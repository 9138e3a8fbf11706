"""Where a result came from: the code version, torch, the machine, its threads and memory policy.

Every run's ``config.json`` (under ``"provenance"``) and every study's ``study.json`` carry
``provenance()``, so a figure in docs/ can be traced to the code that made it and a stale one
can be detected (``tests/test_docs_fresh.py``). The code version is the git commit of the
checkout bnlab is imported from and whether its tree was clean (uncommitted changes make a
result unreproducible from the commit alone); outside a git checkout (an installed wheel) it is
the package version.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from bnlab.memory import current as memory_policy

__all__ = ["code_version", "provenance"]

ROOT = Path(__file__).resolve().parents[2]  # the checkout: src/bnlab/provenance.py -> root


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def _commit() -> str | None:
    if not (ROOT / ".git").exists() or not (ROOT / "src" / "bnlab").is_dir():
        return None
    return _git("rev-parse", "HEAD")


def code_version() -> dict[str, Any]:
    """``{"commit": sha, "clean": bool}`` in a git checkout, else ``{"package": version}``.

    "clean" covers tracked and untracked files outside ignored paths (``git status``), so a
    result made from an uncommitted edit says so. The commit is looked up once per process;
    cleanliness each call (the tree may change while a long study runs).
    """
    commit = _commit()
    if commit is None:
        return {"package": _package_version()}
    status = _git("status", "--porcelain", "--untracked-files=normal")
    return {"commit": commit, "clean": status == "", "package": _package_version()}


def _package_version() -> str:
    try:
        return metadata.version("bnlab")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "not installed"


def provenance(threads: int | None = None) -> dict[str, Any]:
    """The code version, torch version, machine, threads and memory policy (``bnlab.memory``),
    as one JSON-able dict."""
    import torch

    return {"code": code_version(), "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": {"system": platform.system(), "arch": platform.machine(),
                        "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count()},
            "threads": threads if threads is not None else torch.get_num_threads(),
            "memory_policy": memory_policy()}
