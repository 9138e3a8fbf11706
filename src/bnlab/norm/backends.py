"""Which implementation runs a BatchNorm call: the one rule, in one place.

Three backends compute the same function; the tests force each in turn and hold them to each
other and to PyTorch:

* ``reference``: ``bnlab.norm.reference``, torch operations and a hand-derived autograd
  Function. The readable oracle; it serves every call.
* ``kernels``: ``bnlab.norm.kernels``, the compiled CPU operators ``torch.ops.bnlab.*``
  (float32 and float64 tensors on the CPU).
* ``aten``: PyTorch's own ``torch.batch_norm`` (cuDNN on CUDA), under bnlab's argument checks.

The rule (``select``)::

    guarded statistics (a `skipped` counter)  -> reference   only it can refuse a batch
    not on the CPU (CUDA, ...)                -> aten
    float32 / float64 on the CPU              -> kernels     where they are built, else:
    anything else (half types on the CPU)     -> reference
    under torch.func transforms or forward-mode AD, a call that would go to the reference or
    the kernels goes to aten, which has their rules (vmap batching, jvp).
    during ONNX export (either exporter)      -> aten        torch.batch_norm becomes ONNX's
                                   BatchNormalization; in training, its running update goes to
                                   scratch buffers (an ONNX graph keeps no state; bnlab.norm.onnx)

``forced(name)`` pins one backend for a block (guarded calls stay on the reference);
``BNLAB_FAST=0`` switches the kernels off, ``BNLAB_FAST=1`` makes their absence an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from bnlab.norm import kernels, onnx, reference

__all__ = ["BACKENDS", "batch_norm", "forced", "select"]

BACKENDS = ("reference", "kernels", "aten")
_KERNELS_ON = kernels.mode() != "0"  # read once: the per-call rule must cost nothing
kernels.preload()  # where built: so that torch.compile finds them loaded (it cannot load them)
onnx.register()  # the TorchScript exporter's symbolic for graphs that hold bnlab::batch_norm
_forced: list[str | None] = [None]


@contextlib.contextmanager
def forced(name: str | None) -> Iterator[None]:
    """Run every (unguarded) BatchNorm call inside the block on backend `name` (None: the rule)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "kernels" and not kernels.available():
        raise RuntimeError(f"the kernels backend is not available: {kernels.status()}")
    previous = _forced[0]
    _forced[0] = name
    try:
        yield
    finally:
        _forced[0] = previous


def _kernels_ready() -> bool:
    if not _KERNELS_ON:
        return False
    if kernels.loaded():
        return True
    # Never compile or load a library while torch.compile traces: then they serve later calls.
    return not torch.compiler.is_compiling() and kernels.available()


def _transformed(x: Tensor) -> bool:
    """Inside torch.func transforms or forward-mode AD (whose rules only ATen has)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x) or forward_ad._current_level >= 0


def select(x: Tensor, guarded: bool = False) -> str:
    """The backend for a call with input `x` (see the module docstring)."""
    if guarded:
        return "reference"
    if onnx.exporting():
        return "aten"
    name = _forced[0]
    if name is not None:
        return name
    if not x.is_cpu:
        return "aten"
    if (x.dtype is torch.float32 or x.dtype is torch.float64) and _kernels_ready():
        return "kernels"
    return "aten" if not torch.compiler.is_compiling() and _transformed(x) else "reference"


def _aten(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
          weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
          eps: float) -> Tensor:
    if (training and running_mean is not None and running_var is not None
            and not torch.compiler.is_compiling() and _transformed(input)):
        # Inside torch.func transforms torch refuses to update buffers captured from outside
        # (vmap, grad), but ATen's kernel has written them by then: update copies, then the
        # buffers, each of which torch refuses (or accepts) before writing anything.
        mean, var = running_mean.clone(), running_var.clone()
        y = torch.batch_norm(input, weight, bias, mean, var, training, momentum, eps,
                             torch.backends.cudnn.enabled)
        running_mean.copy_(mean)
        running_var.copy_(var)
        return y
    return torch.batch_norm(input, weight, bias, running_mean, running_var, training, momentum,
                            eps, torch.backends.cudnn.enabled)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
               eps: float, skipped: Tensor | None = None) -> Tensor:
    """Run one checked call on the backend ``select`` picks."""
    if training and onnx.exporting():
        # An ONNX graph keeps no state: the batch statistics are exported, the update is not.
        running_mean, running_var = onnx.scratch_statistics(input)
        skipped = None
    name = select(input, skipped is not None)
    if name == "kernels":
        y = kernels.batch_norm(input, weight, bias, running_mean, running_var, training,
                               momentum, eps)
        if y is not None:
            return y
        name = "aten"  # a functorch-wrapped or dual tensor: see kernels.batch_norm
    if name == "aten":
        return _aten(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return reference.batch_norm(input, running_mean, running_var, weight, bias, training,
                                momentum, eps, skipped=skipped)
