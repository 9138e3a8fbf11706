"""The kernel cache's records are untrusted input (issue 26, class 4).

A record (``NAME.so.sha256``) that is empty, not UTF-8, garbage, huge, a link to /dev/zero,
a FIFO or a directory, a library that is a link to /dev/zero or a FIFO, and a library copied in
from another kernel directory with its records: each means "rebuild". ``bnlab kernels build``
(the documented fix) compiles it again and exits 0, no traceback; importing bnlab with such a
cache and no compiler returns (a FIFO or /dev/zero read whole would hang it). Each case runs in
its own process with its own ``BNLAB_KERNELS``; the "compiler" copies the real library (a build
in milliseconds), as in test_kernels.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnlab.norm import kernels
from bnlab.norm.kernels.library import _binding_path, _record_path


@pytest.fixture(scope="module", autouse=True)
def real_library() -> None:
    """The real library, verified in the default kernel directory (compiled if it is not)."""
    global REAL
    REAL = kernels.build(quiet=True)


REAL = kernels.library_path()


def _compiler(tmp_path: Path) -> Path:
    cxx = tmp_path / "cxx"
    cxx.write_text(f'#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\ncp "{REAL}" "$2"\n')
    cxx.chmod(0o755)
    return cxx


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=90)


def _good_copy(directory: Path, name: str) -> Path:
    """The real library and both records, copied into `directory` as `name` (as if built
    elsewhere)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    shutil.copy(REAL, target)
    shutil.copy(_record_path(REAL), _record_path(target))
    shutil.copy(_binding_path(REAL), _binding_path(target))
    return target


IMPORT_THEN_BUILD = ("import sys, bnlab.norm, bnlab.functional; from bnlab.cli import main; "
                     "print('imported', flush=True); sys.exit(main(['kernels', 'build']))")


def _record(content: bytes):
    return lambda lib: _record_path(lib).write_bytes(content)


def _replace(path: Path, make) -> None:
    path.unlink(missing_ok=True)
    make(path)


DAMAGES = {
    "record-empty": _record(b""),
    "record-not-utf8": _record(b"\xff\xfe\x00garbage"),
    "record-garbage": _record(b"hello world and more\n"),
    "record-one-field": _record(b"123\n"),
    "record-huge": lambda lib: os.truncate(_record_path(lib), 1 << 20),
    "record-dev-zero": lambda lib: _replace(_record_path(lib), lambda p: p.symlink_to(
        "/dev/zero")),
    "record-fifo": lambda lib: _replace(_record_path(lib), os.mkfifo),
    "record-directory": lambda lib: _replace(_record_path(lib), Path.mkdir),
    "library-dev-zero": lambda lib: _replace(lib, lambda p: p.symlink_to("/dev/zero")),
    "library-fifo": lambda lib: _replace(lib, os.mkfifo),
    "library-directory": lambda lib: _replace(lib, Path.mkdir),
    "foreign-build": lambda lib: None,  # copied in from the default cache, records and all
    "foreign-without-binding": lambda lib: _binding_path(lib).unlink(),
}


# Where a mistake could hang the import or was a traceback (issue 26), in `make test`; the
# other shapes of a bad record take the same path, in the slow suite.
FAST = {"record-empty", "record-not-utf8", "record-dev-zero", "record-fifo",
        "library-dev-zero", "library-fifo", "foreign-build"}


@pytest.mark.parametrize("damage", [d if d in FAST else pytest.param(d, marks=pytest.mark.slow)
                                    for d in DAMAGES])
def test_a_bad_record_means_rebuild_never_a_traceback(tmp_path, monkeypatch, damage):
    """Importing bnlab does not hang or fail on it (nothing is compiled at import), and
    `bnlab kernels build` compiles the library again."""
    env = {"BNLAB_KERNELS": str(tmp_path / "k"), "CXX": str(_compiler(tmp_path))}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    lib = _good_copy(tmp_path / "k", kernels.library_path().name)
    DAMAGES[damage](lib)
    problem = kernels.verify(lib)
    assert problem is not None  # refused, without hanging on a FIFO or /dev/zero
    if damage.startswith("foreign"):
        assert "was not built here" in problem
    r = _run(["-c", IMPORT_THEN_BUILD], env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.splitlines() == ["imported", str(lib)] and "compiling" in r.stderr
    assert kernels.verify(lib) is None


@pytest.mark.slow
def test_a_verified_library_is_kept(tmp_path, monkeypatch):
    """The binding is to this directory: a library built here verifies, and is not rebuilt."""
    env = {"BNLAB_KERNELS": str(tmp_path / "k"), "CXX": str(_compiler(tmp_path))}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    first = _run(["-m", "bnlab", "kernels", "build"], env)
    assert first.returncode == 0 and "compiling" in first.stderr, first.stderr
    again = _run(["-m", "bnlab", "kernels", "build"], env)
    assert again.returncode == 0 and "compiling" not in again.stderr, again.stderr
    assert kernels.verify(kernels.library_path()) is None
