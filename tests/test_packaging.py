"""The built wheel carries what an installed bnlab needs besides its Python files.

``py.typed`` (PEP 561) tells type checkers to read bnlab's annotations in a user's code; the
C++ source is compiled on the user's machine by ``bnlab kernels build``. Neither is a Python
module: they reach the wheel through ``[tool.setuptools.package-data]`` (setuptools 69 and
later add ``py.typed`` by themselves; the build system allows setuptools 64). The oracle is a
wheel built from a copy of the project (the working tree is left untouched), read back as a
zip file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_py_typed_and_the_kernel_source(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path / "dist"), str(project)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("bnlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "bnlab/py.typed" in names
    assert "bnlab/norm/kernels/csrc/batch_norm_cpu.cpp" in names
    assert "bnlab/norm/reference.py" in names
