"""Compile the C++ kernels once per machine, and verify a compiled library before it is loaded.

The library is compiled into ``$BNLAB_KERNELS``, else ``$XDG_CACHE_HOME/bnlab/kernels``, else
``~/.cache/bnlab/kernels``. Its file name carries a hash of the source, the torch version and
installation, the compiler flags and the CPU, so a stale or foreign build is never loaded.

A library is loaded only if it verifies: next to ``NAME.so`` the build writes ``NAME.so.sha256``
(its size and SHA-256). A damaged library (truncated by a full disk, overwritten, half-copied)
would make the process die with SIGBUS or SIGSEGV inside ``dlopen``; here it is refused with a
warning instead, and ``build()`` compiles it again. Both files are written under temporary names
and renamed into place, so concurrent or interrupted builds never leave a torn file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

__all__ = ["SOURCE", "KernelBuildError", "build", "kernel_dir", "library_path", "verify"]

SOURCE = Path(__file__).parent / "csrc" / "batch_norm_cpu.cpp"
# -fno-trapping-math lets the sigmoid's float->int step vectorize (no FP traps are relied on).
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-fPIC", "-shared",
          "-std=c++20"]
MODULE = "bnlab_batch_norm_cpu"  # the extension's module name (PYBIND11_MODULE)


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled, verified or loaded."""


def kernel_dir() -> Path:
    """Where compiled kernels live (separate from the dataset cache)."""
    if os.environ.get("BNLAB_KERNELS"):
        return Path(os.environ["BNLAB_KERNELS"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bnlab" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def library_path() -> Path:
    """The library for this source, torch installation, compiler and CPU."""
    digest = hashlib.sha256()
    # The torch installation too: the library links against that copy's libtorch.
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), torch.__file__.encode(),
                 " ".join(_FLAGS).encode(), _cpu_flags().encode(),
                 os.environ.get("CXX", "c++").encode()):
        digest.update(part)
    return kernel_dir() / f"bnlab_batch_norm_{digest.hexdigest()[:16]}.so"


def _record_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{path.stat().st_size} {digest.hexdigest()}"


def verify(library: Path) -> str | None:
    """None if `library` is the file its build recorded; else what is wrong with it."""
    record = _record_path(library)
    try:
        expected = record.read_text().strip()
    except OSError:
        return f"{record.name} (the build's record of size and hash) is missing"
    try:
        actual = _fingerprint(library)
    except OSError as e:
        return f"cannot read {library.name}: {e.strerror or e}"
    if actual != expected:
        return (f"{library.name} does not match its build record (size and SHA-256 "
                f"{actual.split()[0]} bytes vs {expected.split()[0]} recorded): it is damaged")
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _compile_command(output: Path) -> list[str]:
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    lib = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [*include_paths(), sysconfig.get_paths()["include"]]
    return [
        os.environ.get("CXX", "c++"), *_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-DTORCH_EXTENSION_NAME={MODULE}", "-DTORCH_API_INCLUDE_EXTENSION_H",
        *(f"-isystem{p}" for p in includes), str(SOURCE), "-o", str(output),
        f"-L{lib}", "-lc10", "-ltorch_cpu", "-ltorch", "-ltorch_python", f"-Wl,-rpath,{lib}",
    ]


def _announce(message: str) -> None:
    """`message` on stderr, above any progress bar that is drawn there.

    The build starts at a model's first call, so usually while an epoch's bar is on screen:
    tqdm's external_write_mode clears the bars, and redraws them after the line. tqdm is used
    only if the caller has imported it already (this package imports nothing of bnlab's).
    """
    tqdm = sys.modules.get("tqdm")
    writing = (tqdm.tqdm.external_write_mode(file=sys.stderr) if tqdm is not None
               else contextlib.nullcontext())
    with writing:
        print(message, file=sys.stderr, flush=True)


def build(*, force: bool = False, quiet: bool = False) -> Path:
    """Compile the kernels unless a verified library is already there; return its path.

    A library that does not verify (see ``verify``) is compiled again. Raises
    KernelBuildError with the compiler's message if compilation fails.
    """
    path = library_path()
    if not force and path.exists() and verify(path) is None:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KernelBuildError(
            f"cannot create the kernel directory {path.parent}: {e}; set BNLAB_KERNELS to a "
            f"writable directory") from e
    if not quiet:
        _announce(f"bnlab: compiling the fast BatchNorm kernels into {path.parent} (once, "
                  f"~1 min)")
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            proc = subprocess.run(_compile_command(tmp), capture_output=True, text=True)
        except OSError as e:  # no compiler at all
            raise KernelBuildError(
                f"no C++ compiler ({e}); install g++ or set CXX, or BNLAB_FAST=0") from e
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise KernelBuildError(f"compiling {SOURCE.name} failed:\n{tail}")
        record = _fingerprint(tmp)
        # The old record goes first: if the build stops between the two renames, the new
        # library has no record, and is refused (and rebuilt), never loaded unchecked.
        _record_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
        _write_atomically(_record_path(path), (record + "\n").encode())
    finally:
        tmp.unlink(missing_ok=True)
    return path
