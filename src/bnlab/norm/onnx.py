"""bnlab's layers in ONNX: standard operators only, from either of PyTorch's exporters.

An exported graph must run in any ONNX runtime, so nothing of bnlab's reaches it: no custom
domain, no ``bnlab::`` operator. Two paths lead there:

* **While ``torch.onnx.export`` traces a model** (the TorchScript-based exporter, or the
  ``torch.export``-based one, ``dynamo=True``), ``exporting()`` is true and every BatchNorm
  call goes to ATen's ``torch.batch_norm`` (the one backend rule, ``bnlab.norm.backends``):
  both exporters turn it into ONNX's ``BatchNormalization``; the fused layers then add
  ``Sigmoid``/``Relu`` and ``AveragePool`` (their composite path, ``bnlab.norm.fused``).
* **A graph traced before** (``torch.jit.trace`` of a model on the compiled kernels, exported
  later) holds the operator ``bnlab::batch_norm`` itself: ``register()`` gives the TorchScript
  exporter its symbolic, which emits the same standard nodes (opset 14 or newer).

Eval mode is BatchNormalization with the running statistics (``y = gamma * (x - mean) /
sqrt(var + eps) + beta``). Training mode normalizes with the batch's statistics, which ONNX
expresses (``BatchNormalization`` with ``training_mode=1``, or ReduceMean nodes); the running
update is state, which an ONNX graph does not keep, so under export it goes to scratch buffers
(``scratch_statistics``): the exported graph is the function the layer computes on a batch,
and exporting leaves the model's buffers as they were. A variant whose training forward is more
than that (noise, ghost batches, renorm corrections, statistics from other processes) is
refused by ``check_training(layer)``: one line naming the layer, the reason, and the fix,
``model.eval()``. In eval mode every variant is BatchNorm with fixed statistics and exports.

Not covered: an ``ExportedProgram`` captured by ``torch.export.export`` on the kernels before,
then given to ``torch.onnx.export``, holds bnlab's operators (and no translation is
registered for them): export the module itself, which the first path serves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["OPSET", "check_training", "exporting", "register", "scratch_statistics",
           "training_refusal"]

OPSET = 14  # the first opset whose BatchNormalization has training_mode (and the symbolic's)

# The `_normalize` hooks that are batch statistics and nothing else (named, not imported:
# the layers import this module).
_BATCH_STATISTICS = {("bnlab.norm.batchnorm", "BatchNormBase._normalize"),
                     ("bnlab.norm.fused", "BatchNormAct._normalize")}
# Why a variant's training forward cannot be a graph of standard ONNX nodes (by class name:
# as above).
_REASONS = {
    "GhostBatchNorm": "normalizes each ghost batch on its own statistics, a split that "
                      "depends on the batch size",
    "BatchRenorm": "corrects the batch statistics by r and d, computed from running "
                   "statistics that every step updates",
    "NoisyBatchNorm": "draws new random noise at every training step",
    "SyncBatchNorm": "exchanges statistics with the other processes",
    "RunningStatsBatchNorm": "normalizes with running averages that every step updates, "
                             "state an ONNX graph does not keep",
    "DetachedBatchNorm": "updates its running statistics inside its forward, state an ONNX "
                         "graph does not keep",
    "PerActivationBatchNorm": "normalizes per activation, not per channel",
}


try:  # the two exporters' own flags: read per BatchNorm call, so read directly (~0.1 us)
    from torch.onnx._internal.exporter import _flags as _dynamo_flags
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _TORCHSCRIPT

    def exporting() -> bool:
        """Whether ``torch.onnx.export`` (either exporter) is running now. (Never while
        TorchDynamo traces: torch.compile does, and torch.onnx's exporter traces non-strict.)"""
        if torch.compiler.is_dynamo_compiling():
            return False
        return _TORCHSCRIPT.in_onnx_export or _dynamo_flags._is_onnx_exporting

except ImportError:  # another torch: its public test (which imports both modules every call)

    def exporting() -> bool:
        """Whether ``torch.onnx.export`` (either exporter) is running now."""
        return not torch.compiler.is_dynamo_compiling() and torch.onnx.is_in_onnx_export()


def scratch_statistics(x: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """The running buffers to hand a training-mode call under export, so that its update lands
    nowhere: none for the torch.export-based exporter (which then computes the statistics
    with ReduceMean; given buffers, it would normalize with them instead), new ones (mean 0,
    variance 1) for the TorchScript-based one (which, given none, needs a fixed batch size).
    (C,) each."""
    if torch.compiler.is_compiling():
        return None, None
    c = x.shape[1]
    return (torch.zeros(c, dtype=x.dtype, device=x.device),
            torch.ones(c, dtype=x.dtype, device=x.device))


def training_refusal(layer: nn.Module) -> str | None:
    """Why `layer`, in training mode, cannot be exported; None if it can (or is in eval)."""
    normalize = getattr(type(layer), "_normalize", None)  # the hook of every bnlab BatchNorm
    if not layer.training or normalize is None:
        return None
    if (normalize.__module__, normalize.__qualname__) in _BATCH_STATISTICS:
        return None  # BatchNorm's own (or the fused layers'): BatchNormalization, training_mode=1
    return _REASONS.get(type(layer).__name__, "computes its own training forward, not "
                        "BatchNorm's batch statistics")


def check_training(layer: nn.Module, name: str = "") -> None:
    """Refuse, in one line naming the layer and the fix, a layer ``training_refusal`` refuses."""
    reason = training_refusal(layer)
    if reason is not None:
        where = f"layer {name!r} ({type(layer).__name__})" if name else type(layer).__name__
        raise RuntimeError(f"{where} cannot be exported to ONNX in training mode: it {reason}; "
                           f"call model.eval() before exporting")


# ---- the TorchScript exporter's symbolic for a graph that holds bnlab::batch_norm ----------

def _symbolic(g: Any, input: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any,
              training: Any, momentum: Any, eps: Any, act: Any = None, pool: Any = None) -> Any:
    """BatchNormalization (ATen's symbolic), then Sigmoid or Relu, then AveragePool 2x2."""
    from torch.onnx import symbolic_helper as sh
    from torch.onnx._internal.torchscript_exporter import symbolic_opset14

    training, act, pool = (bool(sh._maybe_get_const(training, "b")),
                           sh._maybe_get_const(act, "i") if act is not None else 0,
                           sh._maybe_get_const(pool, "i") if pool is not None else 1)
    momentum, eps = sh._maybe_get_const(momentum, "f"), sh._maybe_get_const(eps, "f")
    if sh._is_none(running_mean):
        training = True  # no running statistics: batch statistics, as in eager mode
    y = symbolic_opset14.batch_norm(g, input, weight, bias, running_mean, running_var,
                                    int(training), momentum, eps, 0)
    if act == 1:
        y = g.op("Sigmoid", y)
    elif act == 2:
        y = g.op("Relu", y)
    if pool == 2:
        y = g.op("AveragePool", y, kernel_shape_i=[2, 2], strides_i=[2, 2])
    return y


_registered: list[bool] = []


def register() -> None:
    """Give the TorchScript exporter the symbolic of ``bnlab::batch_norm`` (once)."""
    if not _registered:
        torch.onnx.register_custom_op_symbolic("bnlab::batch_norm", _symbolic, OPSET)
        _registered.append(True)
