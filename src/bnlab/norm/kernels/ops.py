"""The kernels as PyTorch operators: loading, fake implementations, double backward, the call.

Loading the compiled library registers three operators with PyTorch's dispatcher (their C++
side is at the end of ``csrc/batch_norm_cpu.cpp``)::

    torch.ops.bnlab.batch_norm(input, weight?, bias?, running_mean?, running_var?, training,
                               momentum, eps, act=0, pool=1) -> y
    torch.ops.bnlab.batch_norm_forward(same) -> (y, mean, invstd)
    torch.ops.bnlab.batch_norm_backward(grad_out, input, weight?, bias?, mean, invstd,
                                        training, act, pool, need_input_grad)
        -> (dx or an empty tensor, dL/dbias, dL/dweight)

``batch_norm`` is differentiable (a C++ autograd node over the other two) and updates the
running buffers in place in training, as ``torch.nn.functional.batch_norm`` does.
What the operators refuse, at their autograd entry and before any memory is read or buffer
written (C++ ``check_entry``): layouts the kernels do not walk (nested, sparse, quantized,
MKL-DNN, lazily negated views, ZeroTensors: NotImplementedError); forward-mode AD, for which
they have no rule (NotImplementedError, as torch's for an operator without a forward formula;
``bnlab.norm.functional`` and the layers give such calls to ATen instead); running buffers that
require grad while grad mode is on (as torch); and, for ``batch_norm_forward`` and
``batch_norm_backward``, which have no autograd rule, inputs that require grad. ``act`` is
IDENTITY, SIGMOID or RELU (the fused layers of ``bnlab.norm.fused``), ``pool`` 1 or 2 (a 2x2
average pooling after the sigmoid). This module registers what PyTorch needs to trace them without
data (fake implementations: output shapes, dtypes and strides), so jit.trace, torch.export and
torch.compile see one operator where a layer runs; and the differentiable gradients that the
node uses under ``create_graph=True``: each kind of layer registers its own
(``register_double_backward``); BatchNorm's is the reference's closed form.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bnlab.norm import reference
from bnlab.norm.kernels.library import MODULE, KernelBuildError, build, library_path, verify

__all__ = ["IDENTITY", "RELU", "SIGMOID", "available", "batch_norm", "error", "loaded", "mode",
           "preload", "register_double_backward", "status"]

IDENTITY, SIGMOID, RELU = 0, 1, 2  # what follows the normalization (the operators' `act`)
_MODES = ("auto", "0", "1")

_state: dict[str, Any] = {"module": None, "tried": False, "error": None}
DoubleBackward = Callable[..., tuple[Tensor | None, Tensor | None, Tensor | None]]
_double_backward: dict[int, DoubleBackward] = {}


def mode() -> str:
    """BNLAB_FAST: ``auto`` (default: build once, use where they apply), ``0`` (never), ``1``
    (required: an error if they cannot be built)."""
    value = os.environ.get("BNLAB_FAST", "auto").strip().lower() or "auto"
    if value not in _MODES:
        raise ValueError(f"BNLAB_FAST={value!r} is not one of auto, 0, 1 (auto is the default)")
    return value


def register_double_backward(act: int, fn: DoubleBackward) -> None:
    """Register the differentiable gradients of the layer whose operator runs with `act`.

    ``fn(grad_out, x, weight, bias, mean, invstd, training, eps, pool, needs)`` returns
    (grad_x, grad_weight, grad_bias), built from differentiable operations; ``needs`` says
    which of the three are wanted.
    """
    _double_backward[act] = fn


def _double_backward_of(grad_out: Tensor, x: Tensor, weight: Tensor | None,
                        bias: Tensor | None, mean: Tensor, invstd: Tensor, training: bool,
                        eps: float, act: int, pool: int,
                        needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    if act not in _double_backward:
        raise RuntimeError(f"bnlab::batch_norm: no double backward registered for act={act}")
    return _double_backward[act](grad_out, x, weight, bias, mean, invstd, training, eps, pool,
                                 needs)


def _batch_norm_double_backward(grad_out: Tensor, x: Tensor, weight: Tensor | None,
                                bias: Tensor | None, mean: Tensor, invstd: Tensor,
                                training: bool, eps: float, pool: int,
                                needs: tuple[bool, bool, bool]
                                ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    return reference.differentiable_backward(grad_out, x, weight, mean, invstd, training, eps,
                                             needs, x.dtype)


register_double_backward(IDENTITY, _batch_norm_double_backward)


# ---- fake implementations: what the operators return, computed from shapes alone -----------

def _dense(x: Tensor, pool: int) -> Tensor:
    """x as the kernels walk it (the same rule as ``dense`` in the C++ source)."""
    if x.is_contiguous():
        return x
    channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    if pool == 1 and channels_last is not None and x.is_contiguous(memory_format=channels_last):
        return x
    return x.contiguous()


def _one_device(*tensors: Tensor | None) -> None:
    """The fake implementations also serve the meta device; PyTorch's dispatcher sends a call
    there when any argument is a meta tensor, so they refuse a mix as the CPU kernel does."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise RuntimeError(f"bnlab::batch_norm: tensors on several devices "
                           f"({', '.join(sorted(map(str, devices)))}); move them to one")


def _check_epilogue(act: int, pool: int) -> None:
    """The C++ check_input's rule for act and pool, for calls traced without data."""
    if act not in (IDENTITY, SIGMOID, RELU):
        raise ValueError(f"bnlab::batch_norm: act must be 0 (identity), 1 (sigmoid) or 2 (relu), "
                         f"got {act}")
    if pool not in (1, 2) or (pool == 2 and act != SIGMOID):
        raise ValueError(f"bnlab::batch_norm: pool must be 1, or 2 after a sigmoid (act=1); got "
                         f"pool={pool} with act={act}")


def _output_like(x: Tensor, pool: int) -> Tensor:
    x = _dense(x, pool)
    if pool == 1:
        return torch.empty_like(x)
    n, c, h, w = x.shape
    return x.new_empty((n, c, h // 2, w // 2))


def _fake_forward(input: Tensor, weight: Tensor | None, bias: Tensor | None,
                  running_mean: Tensor | None, running_var: Tensor | None, training: bool,
                  momentum: float, eps: float, act: int = IDENTITY,
                  pool: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    _one_device(input, weight, bias, running_mean, running_var)
    _check_epilogue(act, pool)
    c = input.shape[1]
    return _output_like(input, pool), input.new_empty(c), input.new_empty(c)


def _fake_entry(input: Tensor, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor | None, running_var: Tensor | None, training: bool,
                momentum: float, eps: float, act: int = IDENTITY, pool: int = 1) -> Tensor:
    _one_device(input, weight, bias, running_mean, running_var)
    _check_epilogue(act, pool)
    return _output_like(input, pool)


def _fake_backward(grad_out: Tensor, input: Tensor, weight: Tensor | None, bias: Tensor | None,
                   mean: Tensor, invstd: Tensor, training: bool, act: int, pool: int,
                   need_input_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    _one_device(grad_out, input, weight, bias, mean, invstd)
    _check_epilogue(act, pool)
    c = input.shape[1]
    dx = torch.empty_like(_dense(input, pool)) if need_input_grad else input.new_empty(0)
    return dx, input.new_empty(c), input.new_empty(c)


def _register(module: Any) -> None:
    """Once per process, after the library registered the operators."""
    module.set_double_backward(_double_backward_of)
    torch.library.register_fake("bnlab::batch_norm")(_fake_entry)
    torch.library.register_fake("bnlab::batch_norm_forward")(_fake_forward)
    torch.library.register_fake("bnlab::batch_norm_backward")(_fake_backward)


# ---- loading ---------------------------------------------------------------------------------

def _import(path: Any) -> Any:
    problem = verify(path)
    if problem is not None:  # never dlopen a damaged file: it can end the process (SIGBUS)
        raise KernelBuildError(f"refusing to load {path}: {problem}; `bnlab kernels build` "
                               f"compiles it again")
    spec = importlib.util.spec_from_file_location(MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _register(module)
    return module


def preload() -> None:
    """Load the kernels now if they are built and verify, compiling nothing (``bnlab.norm``
    calls this on import, so that torch.compile, which must not load a library while it
    traces, finds them loaded even when a model is compiled before its first eager call)."""
    if mode() != "0" and not _state["tried"]:
        path = library_path()
        if path.exists() and verify(path) is None:
            _load()


def _load() -> Any:
    """The kernels' module, loaded once per process, compiling it first if needed."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["module"] = _import(build())
        except Exception as e:  # any failure means: the other backends serve every call
            _state["error"] = f"{type(e).__name__}: {e}"
            if mode() == "1":
                raise KernelBuildError(
                    f"BNLAB_FAST=1 but the fast kernels are unavailable: {e}") from e
            warnings.warn(
                f"bnlab: fast BatchNorm kernels unavailable ({_state['error']}); using the "
                f"reference implementation (same results, slower). `bnlab kernels build` "
                f"retries; BNLAB_FAST=0 silences this.", RuntimeWarning, stacklevel=4)
    return _state["module"]


def loaded() -> bool:
    """Whether the kernels are loaded in this process (never loads them)."""
    return _state["module"] is not None


def available() -> bool:
    """Whether the kernels are switched on (BNLAB_FAST) and loaded, loading them once."""
    return mode() != "0" and _load() is not None


def error() -> str | None:
    """Why the kernels could not be loaded, if they were tried and could not."""
    return _state["error"]


def status() -> str:
    """One paragraph for humans: are the kernels on, where are they, why not."""
    if mode() == "0":
        return "fast kernels: off (BNLAB_FAST=0); using the reference implementation"
    if not available():
        return f"fast kernels: unavailable ({_state['error']}); using the reference"
    return f"fast kernels: loaded from {library_path()} (threads: {torch.get_num_threads()})"


# ---- the call --------------------------------------------------------------------------------

def batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None,
               running_mean: Tensor | None, running_var: Tensor | None, training: bool,
               momentum: float, eps: float, act: int = IDENTITY, pool: int = 1) -> Tensor | None:
    """``torch.ops.bnlab.batch_norm``; None for functorch-wrapped or forward-mode dual tensors
    (which the operator's C++ autograd node cannot serve: the caller gives them to ATen).

    In eager mode the call goes through the library's own Python binding (a microsecond, where
    a torch.ops call costs several), which still dispatches the operator, so jit.trace records
    it; TorchDynamo cannot see into that binding, so under torch.compile and torch.export the
    operator is called through torch.ops.
    """
    if torch.compiler.is_compiling():
        return torch.ops.bnlab.batch_norm(x, weight, bias, running_mean, running_var, training,
                                          momentum, eps, act, pool)
    return _state["module"].batch_norm(x, weight, bias, running_mean, running_var, training,
                                       momentum, eps, act, pool)
