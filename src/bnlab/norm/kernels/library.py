"""Compile the C++ kernels once per machine, and verify a compiled library before it is loaded.

The library is compiled into ``$BNLAB_KERNELS``, else ``$XDG_CACHE_HOME/bnlab/kernels``, else
``~/.cache/bnlab/kernels``. Its file name carries a hash of the source, the torch version and
installation, the compiler flags and the CPU, so a stale or foreign build is never loaded.

A library is loaded only if it verifies: next to ``NAME.so`` the build writes ``NAME.so.sha256``
(its size and SHA-256) and ``NAME.so.build``, which binds that size and hash to this build (the
library's name, this machine's id, the kernel directory). A damaged library (truncated by a
full disk, overwritten, half-copied) would make the process die with SIGBUS or SIGSEGV inside
``dlopen``; here it is refused with a warning instead, and ``build()`` compiles it again. A
library copied in from elsewhere with its records is refused the same way (its binding names
another build): only what was compiled here is loaded. Every file is written under a temporary
name (``mkstemp``) and renamed into place, so concurrent or interrupted builds never leave a
torn file.

The records are untrusted input, parsed defensively: empty, not UTF-8, garbage or too large all
mean "rebuild", never a traceback. The library and its records are opened ``O_NOFOLLOW |
O_NONBLOCK`` and checked with ``fstat`` to be regular files before a byte is read (a link to
``/dev/zero`` or a FIFO would otherwise hang the import). This module cannot use
``bnlab.files`` (``bnlab.norm`` imports nothing else from bnlab), so it keeps these few guarded
reads and writes itself.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
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


def _binding_path(library: Path) -> Path:
    return library.with_name(library.name + ".build")


_RECORD_LIMIT = 4096  # a record is one short line; anything longer is not one


def _open_regular(path: Path) -> int:
    """A read fd on `path`, refused (OSError) unless it is a regular file and not a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def _fingerprint(path: Path) -> str:
    """``SIZE SHA256`` of the regular file `path` (OSError if it is anything else)."""
    digest = hashlib.sha256()
    with os.fdopen(_open_regular(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        return f"{os.fstat(f.fileno()).st_size} {digest.hexdigest()}"


def _binding(library: Path, fingerprint: str) -> str:
    """`fingerprint` bound to this build: the library's name (source, torch, flags, CPU), this
    machine and this directory; a record copied in from elsewhere does not match it."""
    machine = ""
    for source in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            machine = Path(source).read_text()[:64].strip()
            break
    parts = (fingerprint, library.name, machine or os.uname().nodename,
             os.path.realpath(library.parent))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _read_record(record: Path) -> str | None:
    """The record's text, or None when it is missing or unusable (a reason to rebuild)."""
    try:
        with os.fdopen(_open_regular(record), "rb") as f:
            data = f.read(_RECORD_LIMIT + 1)
    except OSError:
        return None
    try:
        return data.decode("utf-8").strip() if len(data) <= _RECORD_LIMIT else None
    except UnicodeDecodeError:
        return None


def verify(library: Path) -> str | None:
    """None if `library` is the file this machine's build recorded; else what is wrong with it."""
    record = _record_path(library)
    expected = _read_record(record)
    if not expected:
        return (f"{record.name} (the build's record of size and hash) is missing, empty, not "
                f"a regular file or not text")
    fields = expected.split()
    if len(fields) != 2 or not fields[0].isdigit() or len(fields[0]) > 20:
        return f"{record.name} is not a build record (expected: SIZE SHA256)"
    try:
        actual = _fingerprint(library)
    except OSError as e:
        return f"cannot read {library.name}: {e.strerror or e}"
    if actual != " ".join(fields):
        return (f"{library.name} does not match its build record (size and SHA-256 "
                f"{actual.split()[0]} bytes vs {fields[0]} recorded): it is damaged")
    if _read_record(_binding_path(library)) != _binding(library, actual):
        return (f"{library.name} was not built here (its {_binding_path(library).name} is "
                f"missing or names another machine or kernel directory): only a library "
                f"compiled here is loaded")
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


def _discard(path: Path, keep_files: bool = False) -> None:
    """Remove what is at `path` (a file, a link, a FIFO, or a directory), if anything."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif not keep_files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


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
        _discard(_record_path(path))
        _discard(path, keep_files=True)  # a directory in the way; a file is replaced below
        os.replace(tmp, path)
        _discard(_binding_path(path))
        _write_atomically(_binding_path(path), (_binding(path, record) + "\n").encode())
        _write_atomically(_record_path(path), (record + "\n").encode())
    finally:
        tmp.unlink(missing_ok=True)
    return path
