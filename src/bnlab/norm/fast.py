"""The fast path: bnlab's compiled CPU BatchNorm kernels, and when to use them.

``csrc/batch_norm_cpu.cpp`` implements the math of ``bnlab.norm.functional`` (the readable
reference, which stays the teaching implementation and the oracle) as fused C++ kernels:
cache-blocked per-channel statistics read x once, one pass normalizes, the backward is one
reduction pass and one elementwise pass. They are compiled into a Python extension module
whose ``batch_norm`` entry point returns the output with its own autograd node, written in C++
(a Python autograd.Function would cost as much per call as the kernels themselves on small
layers). Under create_graph (double backward) that node calls the reference's differentiable
backward, registered below.

The kernels are compiled once per machine (``bnlab kernels build``, run by ``make setup``; or
automatically on first use, which takes about a minute) into ``$BNLAB_KERNELS``, else
``$XDG_CACHE_HOME/bnlab/kernels``, else ``~/.cache/bnlab/kernels``. The file name carries a hash
of the source, the torch version and installation, the compiler flags and the CPU, so a stale or
foreign build is never loaded. Without a C++ compiler the package keeps working on the reference
implementation (one warning says so).

``BNLAB_FAST`` chooses: ``auto`` (default: use the kernels where they apply, build them if
needed), ``0`` (never: the reference everywhere), ``1`` (required: fail loudly if they cannot be
built). The kernels apply to float32/float64 CPU tensors laid out contiguous or channels_last;
everything else (half types, CUDA, other strides, guarded statistics) takes the reference path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["IDENTITY", "SIGMOID", "available", "batch_norm", "build", "enabled", "kernel_dir",
           "kernels_for", "status"]

SOURCE = Path(__file__).parent / "csrc" / "batch_norm_cpu.cpp"
# -fno-trapping-math lets the sigmoid's float->int step vectorize (no FP traps are relied on).
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-fPIC", "-shared",
          "-std=c++20"]
_MODULE = "bnlab_batch_norm_cpu"  # the extension's module name (PYBIND11_MODULE)
_MODES = {"auto", "0", "1"}


# What the kernels apply after normalizing (their `act` argument); `pool` is 1 or 2.
IDENTITY, SIGMOID = 0, 1


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled or loaded."""


_state: dict[str, Any] = {"ops": None, "tried": False, "error": None, "override": None}


def _mode() -> str:
    mode = os.environ.get("BNLAB_FAST", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"BNLAB_FAST={mode!r} is not one of auto, 0, 1 (auto is the default)")
    return mode


_ON_BY_ENV = _mode() != "0"  # read once: the per-call check must cost nothing


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


def _library_path() -> Path:
    digest = hashlib.sha256()
    # The torch installation too: the library links against that copy's libtorch.
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), torch.__file__.encode(),
                 " ".join(_FLAGS).encode(), _cpu_flags().encode(),
                 os.environ.get("CXX", "c++").encode()):
        digest.update(part)
    return kernel_dir() / f"bnlab_batch_norm_{digest.hexdigest()[:16]}.so"


def _compile_command(output: Path) -> list[str]:
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    lib = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [*include_paths(), sysconfig.get_paths()["include"]]
    return [
        os.environ.get("CXX", "c++"), *_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-DTORCH_EXTENSION_NAME={_MODULE}", "-DTORCH_API_INCLUDE_EXTENSION_H",
        *(f"-isystem{p}" for p in includes), str(SOURCE), "-o", str(output),
        f"-L{lib}", "-lc10", "-ltorch_cpu", "-ltorch", "-ltorch_python", f"-Wl,-rpath,{lib}",
    ]


def build(*, force: bool = False, quiet: bool = False) -> Path:
    """Compile the kernels (unless already built) and return the library's path.

    The library is written under a temporary name and renamed into place, so concurrent
    builders and interrupted builds never leave a truncated library under the real name.
    Raises KernelBuildError with the compiler's message if compilation fails.
    """
    path = _library_path()
    if path.exists() and not force:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KernelBuildError(
            f"cannot create the kernel directory {path.parent}: {e}; set BNLAB_KERNELS to a "
            f"writable directory") from e
    if not quiet:
        print(f"bnlab: compiling the fast BatchNorm kernels into {path.parent} (once, ~1 min)",
              file=sys.stderr, flush=True)
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
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _import(path: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(_MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.set_double_backward(_double_backward)
    return module


def _load() -> Any:
    """The kernels' module, imported once per process, building it first if needed."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["ops"] = _import(build())
        except Exception as e:  # any failure means: use the reference implementation
            _state["error"] = f"{type(e).__name__}: {e}"
            if _mode() == "1":
                raise KernelBuildError(
                    f"BNLAB_FAST=1 but the fast kernels are unavailable: {e}") from e
            warnings.warn(
                f"bnlab: fast BatchNorm kernels unavailable ({_state['error']}); using the "
                f"reference implementation (same results, slower). `bnlab kernels build` "
                f"retries; BNLAB_FAST=0 silences this.", RuntimeWarning, stacklevel=3)
    return _state["ops"]


def available() -> bool:
    """Whether the fast path is switched on and its kernels are loaded (building them once)."""
    return _active() and _load() is not None


def _active() -> bool:
    override = _state["override"]
    return _ON_BY_ENV if override is None else bool(override)


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Force the fast path on or off inside a block (tests and benchmarks compare the two)."""
    previous = _state["override"]
    _state["override"] = on
    try:
        yield
    finally:
        _state["override"] = previous


def _dense_layout(x: Tensor) -> bool:
    if x.is_contiguous():
        return True
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def batch_norm(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
    running_var: Tensor | None, training: bool, momentum: float, eps: float,
    act: int = IDENTITY, pool: int = 1,
) -> Tensor | None:
    """The kernels' BatchNorm (then ``act``, then ``pool``): the output, with the kernels' C++
    autograd node where there is something to differentiate, or None where they do not apply
    (the caller then takes the reference path). Arguments are checked by the caller.

    Once the kernels are loaded, their entry point decides by itself whether it applies (the
    same rule as kernels_for, in C++); before, kernels_for decides, and loads them if it does.
    """
    ops = _state["ops"] if _active() else None
    if ops is None:
        ops = kernels_for(x, weight, bias, running_mean, running_var)
        if ops is None:
            return None
    return ops.batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps,
                          act, pool)


def kernels_for(x: Tensor, *others: Tensor | None) -> Any:
    """The kernels if they apply to this call (input x, per-channel tensors), else None."""
    dtype = x.dtype
    if (dtype is not torch.float32 and dtype is not torch.float64) or not x.is_cpu:
        return None
    if not _active() or x.numel() == 0 or not _dense_layout(x):
        return None
    for t in others:  # (dtypes are singletons: `is` compares them)
        if t is not None and (t.dtype is not dtype or not t.is_cpu or not t.is_contiguous()):
            return None
    ops = _state["ops"]
    return ops if ops is not None else _load()


def _double_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor,
    inv_std: Tensor, running_var: Tensor | None, training: bool, eps: float, act: int,
    pool: int, needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The kernels' autograd node calls this under create_graph=True (double backward): the
    reference implementation's differentiable gradients."""
    if act == IDENTITY:
        from bnlab.norm.functional import differentiable_backward

        return differentiable_backward(grad_out, x, weight, mean, inv_std, training, eps, needs,
                                       x.dtype)
    from bnlab.norm.fused import composite_backward

    return composite_backward(grad_out, x, weight, bias, mean, running_var, training, eps, pool,
                              needs)


def status() -> str:
    """One paragraph for humans: is the fast path on, where is it, why not."""
    if not _active():
        return "fast kernels: off (BNLAB_FAST=0); using the reference implementation"
    ops = _load()
    if ops is None:
        return f"fast kernels: unavailable ({_state['error']}); using the reference"
    return f"fast kernels: loaded from {_library_path()} (threads: {torch.get_num_threads()})"
